package main

// Protobuf-JSON helpers: the value shapes of the proto3 JSON mapping that envd's messages use, so that
// encoding/json reads exactly what @bufbuild/protobuf writes (and a little more: numbers as strings,
// unpadded and URL-safe base64, enum names or numbers) and writes what it reads back.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// U32 is a proto uint32: a JSON number or a decimal string, integral, 0..2^32-1.
type U32 uint32

func (u *U32) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		*u = 0
		return nil
	}
	s := string(b)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		// 1e3 and 7.0 are valid JSON spellings of an integer.
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || f < 0 || f > 4294967295 || f != float64(uint64(f)) {
			return fmt.Errorf("not a uint32: %.40s", string(b))
		}
		v = uint64(f)
	}
	*u = U32(v)
	return nil
}

// Bytes is a proto bytes field: base64, standard or URL-safe alphabet, padded or not.
type Bytes []byte

func (p *Bytes) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		*p = nil
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("bytes field is not a string")
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if d, err := enc.DecodeString(s); err == nil {
			*p = d
			return nil
		}
	}
	return errors.New("bytes field is not base64")
}

func (p Bytes) MarshalJSON() ([]byte, error) {
	return json.Marshal(base64.StdEncoding.EncodeToString(p))
}

// I64 is a proto int64, written as a decimal string as the JSON mapping says.
type I64 int64

func (v I64) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatInt(int64(v), 10) + `"`), nil
}

// Timestamp is google.protobuf.Timestamp: RFC 3339 in UTC with nine fractional digits (the reader
// accepts 0, 3, 6 or 9; nine is always valid).
type Timestamp time.Time

func (t Timestamp) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Time(t).UTC().Format("2006-01-02T15:04:05.000000000Z") + `"`), nil
}

// enumValue reads a proto enum given as its name or its number; names maps name → number.
func enumValue(b []byte, names map[string]int32, what string) (int32, error) {
	if bytes.Equal(b, []byte("null")) {
		return 0, nil
	}
	var s string
	if json.Unmarshal(b, &s) == nil {
		if v, ok := names[s]; ok {
			return v, nil
		}
		return 0, fmt.Errorf("unknown %s %.40q", what, s)
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil || n < -2147483648 || n > 2147483647 {
		return 0, fmt.Errorf("bad %s value", what)
	}
	return int32(n), nil
}

// Signal is process.Signal.
type Signal int32

var signalNames = map[string]int32{"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9}

func (s *Signal) UnmarshalJSON(b []byte) error {
	v, err := enumValue(b, signalNames, "signal")
	*s = Signal(v)
	return err
}

// Enum is an output-only enum, written by name.
type Enum string

// decodeJSON reads one JSON object into v; an empty body is the empty message.
func decodeJSON(body []byte, v interface{}) *rpcError {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	if body[0] != '{' {
		return errf(codeInvalidArgument, "request is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return errf(codeInvalidArgument, "bad request message: %s", clip(err.Error(), 200))
	}
	if dec.More() {
		return errf(codeInvalidArgument, "trailing data after the request message")
	}
	return nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
