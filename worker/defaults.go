package worker

// orDefault sets *v to def when it is zero or negative: every numeric option of
// this package reads "0 (or less) means the default".
func orDefault[T ~int | ~int64 | ~float64](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
