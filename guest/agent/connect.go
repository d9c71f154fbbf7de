package main

// The Connect protocol (connectrpc.com/docs/protocol) over HTTP/1.1, as e2b's SDK speaks it through
// @connectrpc/connect-web with useBinaryFormat: false: unary calls are `POST /pkg.Service/Method` with
// an application/json body; streams use application/connect+json and 5-byte envelopes (flags, big-endian
// length) and end with an end-stream envelope (flag 0x02) that carries the error, if any. The binary
// codec (application/proto, application/connect+proto) is transcoded to the same handlers (pbwire.go).

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	maxUnaryBody   = 16 << 20 // a SendInput of 12 MiB base64-encoded fits
	maxEnvelope    = 16 << 20
	maxStreamInput = 4096 // messages in one StreamInput call
)

type rpcCode string

const (
	codeCanceled           rpcCode = "canceled"
	codeUnknown            rpcCode = "unknown"
	codeInvalidArgument    rpcCode = "invalid_argument"
	codeDeadlineExceeded   rpcCode = "deadline_exceeded"
	codeNotFound           rpcCode = "not_found"
	codeAlreadyExists      rpcCode = "already_exists"
	codePermissionDenied   rpcCode = "permission_denied"
	codeResourceExhausted  rpcCode = "resource_exhausted"
	codeFailedPrecondition rpcCode = "failed_precondition"
	codeUnimplemented      rpcCode = "unimplemented"
	codeInternal           rpcCode = "internal"
	codeUnavailable        rpcCode = "unavailable"
	codeUnauthenticated    rpcCode = "unauthenticated"
)

// httpStatus is the HTTP status the Connect spec assigns to each code for unary errors.
func (c rpcCode) httpStatus() int {
	switch c {
	case codeCanceled:
		return 499
	case codeInvalidArgument, codeFailedPrecondition:
		return http.StatusBadRequest
	case codeDeadlineExceeded:
		return http.StatusGatewayTimeout
	case codeNotFound:
		return http.StatusNotFound
	case codeAlreadyExists:
		return http.StatusConflict
	case codePermissionDenied:
		return http.StatusForbidden
	case codeResourceExhausted:
		return http.StatusTooManyRequests
	case codeUnimplemented:
		return http.StatusNotImplemented
	case codeUnavailable:
		return http.StatusServiceUnavailable
	case codeUnauthenticated:
		return http.StatusUnauthorized
	default:
		return http.StatusInternalServerError
	}
}

type rpcError struct {
	Code    rpcCode `json:"code"`
	Message string  `json:"message,omitempty"`
}

func (e *rpcError) Error() string { return string(e.Code) + ": " + e.Message }

func errf(code rpcCode, format string, args ...interface{}) *rpcError {
	return &rpcError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// call is what a handler gets: the request's context (deadline from Connect-Timeout-Ms, canceled when
// the client goes away), its headers and the account it runs as.
type call struct {
	ctx    context.Context
	header http.Header
	user   *account
}

type unaryFn func(c *call, body []byte) (interface{}, *rpcError)
type serverStreamFn func(c *call, body []byte, send func(interface{}) error) *rpcError
type clientStreamFn func(c *call, next func() ([]byte, *rpcError)) (interface{}, *rpcError)

type method struct {
	unary  unaryFn
	stream serverStreamFn
	client clientStreamFn
}

func writeUnaryError(w http.ResponseWriter, e *rpcError) {
	b, _ := json.Marshal(e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Code.httpStatus())
	_, _ = w.Write(b)
}

// timeout reads Connect-Timeout-Ms (at most 10 digits, per the spec).
func timeout(h http.Header) (time.Duration, *rpcError) {
	v := h.Get("Connect-Timeout-Ms")
	if v == "" {
		return 0, nil
	}
	if len(v) > 10 {
		return 0, errf(codeInvalidArgument, "Connect-Timeout-Ms is too long")
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, errf(codeInvalidArgument, "bad Connect-Timeout-Ms %.20q", v)
	}
	return time.Duration(n) * time.Millisecond, nil
}

func mediaType(h http.Header) string {
	ct := h.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.ToLower(strings.TrimSpace(ct))
}

// serveRPC runs one Connect call to m; the caller has authenticated it.
func (a *agent) serveRPC(w http.ResponseWriter, r *http.Request, m *method) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeUnaryError(w, errf(codeUnimplemented, "only POST is supported"))
		return
	}
	if v := r.Header.Get("Connect-Protocol-Version"); v != "" && v != "1" {
		writeUnaryError(w, errf(codeInvalidArgument, "unsupported Connect-Protocol-Version %.10q", v))
		return
	}
	mt := mediaType(r.Header)
	streaming := m.unary == nil
	binary := false
	switch {
	case !streaming && mt == "application/json", streaming && mt == "application/connect+json":
	case !streaming && mt == "application/proto", streaming && mt == "application/connect+proto":
		binary = true
	default:
		if streaming {
			w.Header().Set("Accept-Post", "application/connect+json, application/connect+proto")
		} else {
			w.Header().Set("Accept-Post", "application/json, application/proto")
		}
		w.WriteHeader(http.StatusUnsupportedMediaType)
		return
	}
	path := r.URL.Path
	// in and out transcode binary messages to and from the JSON the handlers speak.
	in := func(b []byte) ([]byte, *rpcError) {
		if !binary || b == nil {
			return b, nil
		}
		return pbRequest(path, b)
	}
	out := func(res interface{}) ([]byte, error) {
		if binary {
			return pbResponse(path, res)
		}
		return json.Marshal(res)
	}
	respType := mt
	d, terr := timeout(r.Header)
	if terr != nil {
		if streaming {
			a.endStream(w, terr, false, respType)
		} else {
			writeUnaryError(w, terr)
		}
		return
	}
	ctx := r.Context()
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	user, uerr := a.requestUser(r.Header.Get("Authorization"), "")
	c := &call{ctx: ctx, header: r.Header, user: user}
	if !streaming {
		if uerr != nil {
			writeUnaryError(w, uerr)
			return
		}
		if enc := r.Header.Get("Content-Encoding"); enc != "" && enc != "identity" {
			writeUnaryError(w, errf(codeUnimplemented, "unsupported Content-Encoding %.20q", enc))
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxUnaryBody+1))
		if err != nil {
			writeUnaryError(w, errf(codeInvalidArgument, "reading the request: %v", err))
			return
		}
		if len(body) > maxUnaryBody {
			writeUnaryError(w, errf(codeResourceExhausted, "request is over %d bytes", maxUnaryBody))
			return
		}
		if !binary && len(body) == 0 {
			body = []byte("{}")
		}
		body, rerr := in(body)
		if rerr != nil {
			writeUnaryError(w, rerr)
			return
		}
		res, rerr := m.unary(c, body)
		if rerr != nil {
			writeUnaryError(w, rerr)
			return
		}
		b, err := out(res)
		if err != nil {
			writeUnaryError(w, errf(codeInternal, "encoding the response: %v", err))
			return
		}
		w.Header().Set("Content-Type", respType)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
		return
	}
	if enc := r.Header.Get("Connect-Content-Encoding"); enc != "" && enc != "identity" {
		a.endStream(w, errf(codeUnimplemented, "unsupported Connect-Content-Encoding %.20q", enc), false, respType)
		return
	}
	if uerr != nil {
		a.endStream(w, uerr, false, respType)
		return
	}
	br := bufio.NewReader(r.Body)
	if m.client != nil {
		n := 0
		next := func() ([]byte, *rpcError) {
			if n >= maxStreamInput {
				return nil, errf(codeResourceExhausted, "over %d messages in one stream", maxStreamInput)
			}
			n++
			b, e := readEnvelope(br)
			if e != nil {
				return nil, e
			}
			return in(b)
		}
		res, rerr := m.client(c, next)
		if rerr == nil {
			b, err := out(res)
			if err != nil {
				rerr = errf(codeInternal, "encoding the response: %v", err)
			} else {
				w.Header().Set("Content-Type", respType)
				_ = writeEnvelope(w, 0, b)
			}
		}
		a.endStream(w, rerr, true, respType)
		return
	}
	body, rerr := readEnvelope(br)
	if rerr == nil && body == nil {
		rerr = errf(codeInvalidArgument, "the stream carries no request message")
	}
	if rerr == nil {
		body, rerr = in(body)
	}
	if rerr != nil {
		a.endStream(w, rerr, false, respType)
		return
	}
	started := false
	send := func(msg interface{}) error {
		b, err := out(msg)
		if err != nil {
			return err
		}
		if !started {
			w.Header().Set("Content-Type", respType)
			started = true
		}
		if err := writeEnvelope(w, 0, b); err != nil {
			return err
		}
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		return nil
	}
	rerr = m.stream(c, body, send)
	if rerr != nil && rerr.Code == codeCanceled && r.Context().Err() != nil {
		return // the client is gone: nobody reads an end-stream message
	}
	a.endStream(w, rerr, started, respType)
}

// readEnvelope reads one enveloped message; (nil, nil) at a clean end of the stream.
func readEnvelope(br *bufio.Reader) ([]byte, *rpcError) {
	var hdr [5]byte
	n, err := io.ReadFull(br, hdr[:])
	if n == 0 && err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, errf(codeInvalidArgument, "truncated envelope header")
	}
	flags := hdr[0]
	size := binary.BigEndian.Uint32(hdr[1:])
	if flags&0x01 != 0 {
		return nil, errf(codeInvalidArgument, "compressed message, but no compression was negotiated")
	}
	if flags&^0x02 != 0 {
		return nil, errf(codeInvalidArgument, "unknown envelope flags 0x%02x", flags)
	}
	if size > maxEnvelope {
		return nil, errf(codeResourceExhausted, "message of %d bytes is over the %d-byte limit", size, maxEnvelope)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, errf(codeInvalidArgument, "truncated message: %d bytes announced", size)
	}
	if flags&0x02 != 0 {
		return nil, nil // a client's end-stream envelope ends its messages
	}
	return body, nil
}

func writeEnvelope(w io.Writer, flags byte, b []byte) error {
	var hdr [5]byte
	hdr[0] = flags
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(b)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// endStream writes the end-stream message (JSON, whatever the codec); streams always answer HTTP 200.
func (a *agent) endStream(w http.ResponseWriter, e *rpcError, started bool, contentType string) {
	if !started {
		w.Header().Set("Content-Type", contentType)
	}
	var b []byte
	if e != nil {
		b, _ = json.Marshal(struct {
			Error *rpcError `json:"error"`
		}{e})
	} else {
		b = []byte("{}")
	}
	_ = writeEnvelope(w, 0x02, b)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// ctxError turns a context's end into the Connect code for it.
func ctxError(ctx context.Context) *rpcError {
	if ctx.Err() == context.DeadlineExceeded {
		return errf(codeDeadlineExceeded, "the call's deadline passed")
	}
	return errf(codeCanceled, "the call was canceled")
}
