package rules

import (
	"bytes"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/textproto"
	"net/url"
	"strings"
)

// maxBoundaryLen is the longest multipart boundary RFC 2046 allows.
const maxBoundaryLen = 70

// multipartJSON reads a multipart/form-data body (RFC 7578) as a JSON object
// of its text fields, the shape formJSON gives a form-urlencoded body: a
// field sent several times becomes a list. A part is a text field when its
// Content-Disposition is form-data with a name and no filename, and its
// Content-Type, if any, is text/*; other parts (files, JSON documents, nested
// multipart/mixed) are skipped unread, and so is a field longer than
// MaxMultipartFieldSize. A body with more than MaxMultipartParts parts, a
// part header block over MaxMultipartHeaderSize, no boundary, or no closing
// delimiter (truncated) is not read at all (false).
//
// It works on the captured body in place, in one pass: each delimiter is
// found by one search from the end of the previous part, and each header
// block is read within its cap, so the time is linear in the body whatever
// its parts. Lines may end in CRLF or, as Go's mime/multipart also accepts,
// a bare LF.
func multipartJSON(body []byte, boundary string) ([]byte, bool) {
	if boundary == "" || len(boundary) > maxBoundaryLen {
		return nil, false
	}
	mp := multipartScanner{body: body, dash: "--" + boundary}
	var (
		after int
		final bool
		ok    bool
	)
	if bytes.HasPrefix(body, []byte(mp.dash)) {
		after, final, ok = mp.delimiterAt(0)
	}
	if !ok {
		_, after, final, ok = mp.next(0) // after a preamble
		if !ok {
			return nil, false
		}
	}
	vals := url.Values{}
	for parts := 0; !final; parts++ {
		if parts == MaxMultipartParts {
			return nil, false
		}
		hdr, contentStart, ok := mp.headers(after)
		if !ok {
			return nil, false
		}
		var end int
		end, after, final, ok = mp.next(contentStart)
		if !ok {
			return nil, false // truncated: the part never ends
		}
		if name, cte, text := textField(hdr); text && end-contentStart <= MaxMultipartFieldSize {
			if v, ok := fieldValue(body[contentStart:end], cte); ok {
				vals[name] = append(vals[name], v)
			}
		}
	}
	return formJSON(vals), true
}

// multipartScanner finds the delimiters and header blocks of one body.
type multipartScanner struct {
	body []byte
	dash string // "--" + boundary
}

// next finds the first delimiter line at or after from, which must follow a
// line break: end is where the content before it stops (its CRLF or LF
// excluded), after is where the next part's headers start, final reports
// the close delimiter ("--boundary--").
func (mp *multipartScanner) next(from int) (end, after int, final, ok bool) {
	nl := "\n" + mp.dash
	for from <= len(mp.body) {
		i := bytes.Index(mp.body[from:], []byte(nl))
		if i < 0 {
			return 0, 0, false, false
		}
		i += from
		if after, final, ok := mp.delimiterAt(i + 1); ok {
			end = i
			if end > 0 && mp.body[end-1] == '\r' {
				end--
			}
			return end, after, final, true
		}
		from = i + 1 // the boundary text inside content, not a delimiter
	}
	return 0, 0, false, false
}

// delimiterAt reports whether a delimiter line starts at i: "--boundary",
// then "--" for the close delimiter, or else optional spaces and the line
// break. after is the first byte past the line.
func (mp *multipartScanner) delimiterAt(i int) (after int, final, ok bool) {
	j := i + len(mp.dash)
	if !bytes.HasPrefix(mp.body[i:], []byte(mp.dash)) {
		return 0, false, false
	}
	if bytes.HasPrefix(mp.body[j:], []byte("--")) {
		return len(mp.body), true, true // the epilogue after it is ignored
	}
	for j < len(mp.body) && (mp.body[j] == ' ' || mp.body[j] == '\t') {
		j++
	}
	switch {
	case bytes.HasPrefix(mp.body[j:], []byte("\r\n")):
		return j + 2, false, true
	case bytes.HasPrefix(mp.body[j:], []byte("\n")):
		return j + 1, false, true
	}
	return 0, false, false
}

// partHeader is what multipartJSON reads of a part's header block.
type partHeader struct {
	disposition, contentType, encoding string
}

// headers reads the header block starting at i: its lines, with their line
// breaks, are at most MaxMultipartHeaderSize bytes, and an empty line ends
// it. contentStart is where the part's content begins.
func (mp *multipartScanner) headers(i int) (h partHeader, contentStart int, ok bool) {
	start := i
	limit := min(len(mp.body), i+MaxMultipartHeaderSize+2) // room for the empty line's CRLF
	var last *string                                       // the header a folded line continues
	for {
		j := bytes.IndexByte(mp.body[i:limit], '\n')
		if j < 0 {
			return h, 0, false // over the cap, or truncated
		}
		line := mp.body[i : i+j]
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			return h, i + j + 1, i-start <= MaxMultipartHeaderSize
		}
		i += j + 1
		if line[0] == ' ' || line[0] == '\t' {
			if last == nil {
				return h, 0, false // a continuation of nothing
			}
			*last += " " + strings.TrimSpace(string(line))
			continue
		}
		k := bytes.IndexByte(line, ':')
		if k <= 0 {
			return h, 0, false // not a header line
		}
		last = nil
		switch textproto.CanonicalMIMEHeaderKey(string(bytes.TrimSpace(line[:k]))) {
		case "Content-Disposition":
			last = &h.disposition
		case "Content-Type":
			last = &h.contentType
		case "Content-Transfer-Encoding":
			last = &h.encoding
		default:
			continue
		}
		*last = strings.TrimSpace(string(line[k+1:]))
	}
}

// textField reports whether a part is a text field, and its name and
// transfer encoding.
func textField(h partHeader) (name, encoding string, ok bool) {
	disp, params, err := mime.ParseMediaType(h.disposition)
	if err != nil || disp != "form-data" || params["name"] == "" {
		return "", "", false
	}
	if _, file := params["filename"]; file {
		return "", "", false
	}
	if h.contentType != "" {
		mt, _, err := mime.ParseMediaType(h.contentType)
		if err != nil || !strings.HasPrefix(mt, "text/") {
			return "", "", false
		}
	}
	return params["name"], strings.ToLower(h.encoding), true
}

// fieldValue decodes a text field's content by its Content-Transfer-Encoding
// (RFC 7578 deprecates them; quoted-printable is still decoded, as Go's
// mime/multipart does). Other encodings are not read.
func fieldValue(content []byte, encoding string) (string, bool) {
	switch encoding {
	case "", "7bit", "8bit", "binary":
		return string(content), true
	case "quoted-printable":
		b, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(content)))
		if err != nil {
			return "", false
		}
		return string(b), true
	}
	return "", false
}
