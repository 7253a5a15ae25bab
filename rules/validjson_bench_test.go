package rules

import (
	"encoding/json"
	"testing"

	"github.com/tidwall/gjson"
)

// BenchmarkValidJSON checks the request and response bodies of the SCIM
// /Bulk of BenchmarkBatch50 (every envelope's first cost), against
// encoding/json.Valid and gjson.Valid on the same bytes as yardsticks.
func BenchmarkValidJSON(b *testing.B) {
	_, envelope, _ := benchBatch(b)
	ex := envelope()
	bodies := [][]byte{ex.RequestBody, ex.ResponseBody}
	n := int64(len(ex.RequestBody) + len(ex.ResponseBody))
	for _, c := range []struct {
		name  string
		valid func([]byte) bool
	}{{"authtap", validJSON}, {"encoding-json", json.Valid}, {"gjson", gjson.ValidBytes}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(n)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				for _, body := range bodies {
					if !c.valid(body) {
						b.Fatal("not valid")
					}
				}
			}
		})
	}
}
