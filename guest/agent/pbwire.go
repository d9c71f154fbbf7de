package main

// Binary protobuf for the same messages (application/proto, application/connect+proto), for host
// clients that use Connect's default binary format. Requests are transcoded to the JSON form the
// handlers read, responses from the JSON they write, by a schema of exactly these messages. Unknown
// fields are skipped; anything malformed is an error, never a panic.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

type kind int

const (
	kString kind = iota
	kBytes
	kBool
	kU32
	kI64
	kS32
	kEnum
	kMsg
	kTime
	kMapSS
)

type pbField struct {
	num      uint64
	name     string // the JSON name the handlers use
	kind     kind
	msg      *pbMsg
	enum     map[string]int32
	repeated bool
}

type pbMsg struct{ fields []pbField }

func (m *pbMsg) byNum(n uint64) *pbField {
	for i := range m.fields {
		if m.fields[i].num == n {
			return &m.fields[i]
		}
	}
	return nil
}

// --- decoding: binary → the handlers' JSON -------------------------------------------------------

type pbReader struct {
	b   []byte
	off int
}

func (r *pbReader) varint() (uint64, error) {
	var v uint64
	for i := 0; i < 10; i++ {
		if r.off >= len(r.b) {
			return 0, fmt.Errorf("truncated varint")
		}
		c := r.b[r.off]
		r.off++
		if i == 9 && c > 1 {
			return 0, fmt.Errorf("varint overflows 64 bits")
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("varint over 10 bytes")
}

func (r *pbReader) bytes() ([]byte, error) {
	n, err := r.varint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(r.b)-r.off) {
		return nil, fmt.Errorf("a length of %d runs past the message", n)
	}
	s := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return s, nil
}

func (r *pbReader) skip(wt uint64) error {
	switch wt {
	case 0:
		_, err := r.varint()
		return err
	case 1, 5:
		n := 8
		if wt == 5 {
			n = 4
		}
		if len(r.b)-r.off < n {
			return fmt.Errorf("truncated fixed field")
		}
		r.off += n
		return nil
	case 2:
		_, err := r.bytes()
		return err
	}
	return fmt.Errorf("unsupported wire type %d", wt)
}

// pbToJSON decodes b as m into the JSON value the handlers decode.
func pbToJSON(b []byte, m *pbMsg) (map[string]interface{}, error) {
	out := map[string]interface{}{}
	r := &pbReader{b: b}
	for r.off < len(r.b) {
		tag, err := r.varint()
		if err != nil {
			return nil, err
		}
		num, wt := tag>>3, tag&7
		if num == 0 || num > 1<<29-1 {
			return nil, fmt.Errorf("bad field number %d", num)
		}
		f := m.byNum(num)
		if f == nil {
			if err := r.skip(wt); err != nil {
				return nil, err
			}
			continue
		}
		want := uint64(0)
		switch f.kind {
		case kString, kBytes, kMsg, kTime, kMapSS:
			want = 2
		}
		if wt != want {
			return nil, fmt.Errorf("field %s has wire type %d, want %d", f.name, wt, want)
		}
		var v interface{}
		switch f.kind {
		case kString:
			s, err := r.bytes()
			if err != nil {
				return nil, err
			}
			if !utf8.Valid(s) {
				return nil, fmt.Errorf("field %s is not UTF-8", f.name)
			}
			v = string(s)
		case kBytes:
			s, err := r.bytes()
			if err != nil {
				return nil, err
			}
			v = base64.StdEncoding.EncodeToString(s)
		case kBool:
			x, err := r.varint()
			if err != nil {
				return nil, err
			}
			v = x != 0
		case kU32:
			x, err := r.varint()
			if err != nil {
				return nil, err
			}
			v = uint32(x) // proto truncates a wider varint to 32 bits
		case kEnum:
			x, err := r.varint()
			if err != nil {
				return nil, err
			}
			v = int32(x)
		case kI64:
			x, err := r.varint()
			if err != nil {
				return nil, err
			}
			v = strconv.FormatInt(int64(x), 10)
		case kS32:
			x, err := r.varint()
			if err != nil {
				return nil, err
			}
			v = int32(uint32(x>>1) ^ -uint32(x&1))
		case kMsg:
			s, err := r.bytes()
			if err != nil {
				return nil, err
			}
			sub, err := pbToJSON(s, f.msg)
			if err != nil {
				return nil, err
			}
			if prev, ok := out[f.name].(map[string]interface{}); ok && !f.repeated {
				for k, x := range sub { // a message field seen twice merges
					prev[k] = x
				}
				sub = prev
			}
			v = sub
		case kMapSS:
			s, err := r.bytes()
			if err != nil {
				return nil, err
			}
			kv, err := pbToJSON(s, msg(pbField{num: 1, name: "k", kind: kString}, pbField{num: 2, name: "v", kind: kString}))
			if err != nil {
				return nil, err
			}
			mp, _ := out[f.name].(map[string]interface{})
			if mp == nil {
				mp = map[string]interface{}{}
				out[f.name] = mp
			}
			k, _ := kv["k"].(string)
			val, _ := kv["v"].(string)
			mp[k] = val
			continue
		case kTime:
			return nil, fmt.Errorf("field %s: a timestamp in a request", f.name)
		}
		if f.repeated {
			arr, _ := out[f.name].([]interface{})
			out[f.name] = append(arr, v)
		} else {
			out[f.name] = v
		}
	}
	return out, nil
}

// pbRequest turns a binary request into the JSON body the handlers read.
func pbRequest(path string, b []byte) ([]byte, *rpcError) {
	s, ok := pbSchemas[path]
	if !ok {
		return nil, errf(codeUnimplemented, "no binary schema for %s", path)
	}
	v, err := pbToJSON(b, s[0])
	if err != nil {
		return nil, errf(codeInvalidArgument, "bad protobuf request: %v", err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, errf(codeInternal, "transcoding the request: %v", err)
	}
	return j, nil
}

// --- encoding: the handlers' JSON → binary --------------------------------------------------------

func putVarint(b *bytes.Buffer, v uint64) {
	for v >= 0x80 {
		b.WriteByte(byte(v) | 0x80)
		v >>= 7
	}
	b.WriteByte(byte(v))
}

func putTag(b *bytes.Buffer, num uint64, wt uint64) { putVarint(b, num<<3|wt) }

func putLen(b *bytes.Buffer, num uint64, p []byte) {
	putTag(b, num, 2)
	putVarint(b, uint64(len(p)))
	b.Write(p)
}

func jsonNum(v interface{}) (float64, error) {
	switch x := v.(type) {
	case json.Number:
		return x.Float64()
	case float64:
		return x, nil
	case string:
		return strconv.ParseFloat(x, 64)
	}
	return 0, fmt.Errorf("not a number: %T", v)
}

func encodeValue(b *bytes.Buffer, f *pbField, v interface{}) error {
	switch f.kind {
	case kString:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: not a string", f.name)
		}
		putLen(b, f.num, []byte(s))
	case kBytes:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: not base64", f.name)
		}
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return err
		}
		putLen(b, f.num, raw)
	case kBool:
		x, ok := v.(bool)
		if !ok {
			return fmt.Errorf("%s: not a bool", f.name)
		}
		putTag(b, f.num, 0)
		if x {
			putVarint(b, 1)
		} else {
			putVarint(b, 0)
		}
	case kU32, kS32, kI64:
		var n int64
		if s, ok := v.(string); ok && f.kind == kI64 {
			x, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return err
			}
			n = x
		} else {
			x, err := jsonNum(v)
			if err != nil || x != math.Trunc(x) {
				return fmt.Errorf("%s: not an integer", f.name)
			}
			n = int64(x)
		}
		putTag(b, f.num, 0)
		switch f.kind {
		case kS32:
			putVarint(b, uint64(uint32((int32(n)<<1)^(int32(n)>>31))))
		case kU32:
			putVarint(b, uint64(uint32(n)))
		default:
			putVarint(b, uint64(n))
		}
	case kEnum:
		var n int32
		if s, ok := v.(string); ok {
			x, ok := f.enum[s]
			if !ok {
				return fmt.Errorf("%s: unknown enum value %q", f.name, s)
			}
			n = x
		} else {
			x, err := jsonNum(v)
			if err != nil {
				return err
			}
			n = int32(x)
		}
		putTag(b, f.num, 0)
		putVarint(b, uint64(int64(n))) // negative enums take 10 bytes, as the spec says
	case kTime:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: not a timestamp", f.name)
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return err
		}
		var sub bytes.Buffer
		if sec := t.Unix(); sec != 0 {
			putTag(&sub, 1, 0)
			putVarint(&sub, uint64(sec))
		}
		if ns := t.Nanosecond(); ns != 0 {
			putTag(&sub, 2, 0)
			putVarint(&sub, uint64(ns))
		}
		putLen(b, f.num, sub.Bytes())
	case kMsg:
		obj, ok := v.(map[string]interface{})
		if !ok {
			return fmt.Errorf("%s: not an object", f.name)
		}
		var sub bytes.Buffer
		if err := encodeMsg(&sub, f.msg, obj); err != nil {
			return err
		}
		putLen(b, f.num, sub.Bytes())
	case kMapSS:
		obj, ok := v.(map[string]interface{})
		if !ok {
			return fmt.Errorf("%s: not an object", f.name)
		}
		for k, x := range obj {
			s, ok := x.(string)
			if !ok {
				return fmt.Errorf("%s: a value that is not a string", f.name)
			}
			var e bytes.Buffer
			putLen(&e, 1, []byte(k))
			putLen(&e, 2, []byte(s))
			putLen(b, f.num, e.Bytes())
		}
	}
	return nil
}

func encodeMsg(b *bytes.Buffer, m *pbMsg, obj map[string]interface{}) error {
	for i := range m.fields {
		f := &m.fields[i]
		v, ok := obj[f.name]
		if !ok || v == nil {
			continue
		}
		if f.repeated {
			arr, ok := v.([]interface{})
			if !ok {
				return fmt.Errorf("%s: not a list", f.name)
			}
			for _, x := range arr {
				if err := encodeValue(b, f, x); err != nil {
					return err
				}
			}
			continue
		}
		if err := encodeValue(b, f, v); err != nil {
			return err
		}
	}
	return nil
}

// pbResponse encodes a handler's result (through its JSON form) as the method's response message.
func pbResponse(path string, res interface{}) ([]byte, error) {
	s, ok := pbSchemas[path]
	if !ok {
		return nil, fmt.Errorf("no binary schema for %s", path)
	}
	j, err := json.Marshal(res)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var obj map[string]interface{}
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := encodeMsg(&b, s[1], obj); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
