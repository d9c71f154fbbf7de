package main

// GET/POST /files: download a file, upload one (application/octet-stream) or several
// (multipart/form-data, one `file` part each, named by its filename). Parent directories are made;
// files belong to the user; nothing is buffered whole in memory.

import (
	"compress/gzip"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const maxUploadParts = 1000

// signatureOK checks a signed URL: v1_ + base64(sha256("path:operation:user:token[:expiration]")).
func (a *agent) signatureOK(r *http.Request, operation string) bool {
	q := r.URL.Query()
	sig := q.Get("signature")
	a.mu.Lock()
	tok := a.token
	a.mu.Unlock()
	if sig == "" || tok == "" {
		return false
	}
	raw := q.Get("path") + ":" + operation + ":" + q.Get("username") + ":" + tok
	if exp := q.Get("signature_expiration"); exp != "" {
		n, err := strconv.ParseInt(exp, 10, 64)
		if err != nil || time.Now().Unix() > n {
			return false
		}
		raw += ":" + exp
	}
	sum := sha256.Sum256([]byte(raw))
	want := "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
	return subtle.ConstantTimeCompare([]byte(sig), []byte(want)) == 1
}

func httpStatusOf(e *rpcError) int {
	switch e.Code {
	case codeNotFound:
		return http.StatusNotFound
	case codePermissionDenied:
		return http.StatusForbidden // the path's permissions (an unknown user is 401, in serveFiles)
	case codeInvalidArgument, codeAlreadyExists, codeFailedPrecondition:
		return http.StatusBadRequest
	case codeResourceExhausted:
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

func (a *agent) serveFiles(w http.ResponseWriter, r *http.Request) {
	op := "read"
	if r.Method == http.MethodPost {
		op = "write"
	} else if r.Method != http.MethodGet {
		writeJSONError(w, http.StatusMethodNotAllowed, "use GET or POST")
		return
	}
	if !a.authorized(r) && !a.signatureOK(r, op) {
		writeJSONError(w, http.StatusUnauthorized, "missing or wrong X-Access-Token or signature")
		return
	}
	q := r.URL.Query()
	acct, e := a.requestUser("", q.Get("username"))
	if e != nil {
		writeJSONError(w, http.StatusUnauthorized, "%s", e.Message)
		return
	}
	if op == "read" {
		a.download(w, r, acct, q.Get("path"))
	} else {
		a.upload(w, r, acct, q.Get("path"))
	}
}

func (a *agent) download(w http.ResponseWriter, r *http.Request, acct *account, p string) {
	path, e := resolvePath(p, acct)
	if e != nil {
		writeJSONError(w, http.StatusBadRequest, "%s", e.Message)
		return
	}
	var f *os.File
	err := a.asUser(acct, func() error {
		var err error
		f, err = os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a FIFO must not hang the open
		return err
	})
	if err != nil {
		e := fsError(err, path)
		writeJSONError(w, httpStatusOf(e), "%s", e.Message)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		writeJSONError(w, http.StatusBadRequest, "%s is not a regular file", path)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filepath.Base(path)}))
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") && r.Header.Get("Range") == "" {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Vary", "Accept-Encoding")
		zw := gzip.NewWriter(w)
		_, _ = io.Copy(zw, f)
		_ = zw.Close()
		return
	}
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

type uploaded struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// writeFile streams src into path (parents made, truncating), as acct.
func (a *agent) writeFile(acct *account, path string, src io.Reader) *rpcError {
	var f *os.File
	err := a.asUser(acct, func() error {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		var err error
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NONBLOCK, 0o644)
		return err
	})
	if err != nil {
		return fsError(err, path)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return errf(codeInvalidArgument, "%s is not a regular file", path)
	}
	if _, err := io.Copy(f, src); err != nil {
		var se *os.PathError
		if errors.As(err, &se) {
			return fsError(err, path)
		}
		return errf(codeInvalidArgument, "reading the upload: %v", err)
	}
	if err := f.Close(); err != nil {
		return fsError(err, path)
	}
	return nil
}

func (a *agent) upload(w http.ResponseWriter, r *http.Request, acct *account, qpath string) {
	var out []uploaded
	fail := func(e *rpcError) { writeJSONError(w, httpStatusOf(e), "%s", e.Message) }
	done := func(path string) {
		out = append(out, uploaded{Path: path, Name: filepath.Base(path), Type: "file"})
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		mt = ""
	}
	switch mt {
	case "application/octet-stream":
		if qpath == "" {
			fail(errf(codeInvalidArgument, "an octet-stream upload needs the path parameter"))
			return
		}
		path, e := resolvePath(qpath, acct)
		if e != nil {
			fail(e)
			return
		}
		var body io.Reader = r.Body
		switch r.Header.Get("Content-Encoding") {
		case "", "identity":
		case "gzip":
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				fail(errf(codeInvalidArgument, "bad gzip body: %v", err))
				return
			}
			defer zr.Close()
			body = zr
		default:
			fail(errf(codeInvalidArgument, "unsupported Content-Encoding"))
			return
		}
		if e := a.writeFile(acct, path, body); e != nil {
			fail(e)
			return
		}
		done(path)
	case "multipart/form-data":
		if params["boundary"] == "" {
			fail(errf(codeInvalidArgument, "multipart body without a boundary"))
			return
		}
		mr, err := r.MultipartReader()
		if err != nil {
			fail(errf(codeInvalidArgument, "bad multipart body: %v", err))
			return
		}
		for n := 0; ; n++ {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				fail(errf(codeInvalidArgument, "bad multipart body: %v", err))
				return
			}
			if n >= maxUploadParts {
				fail(errf(codeInvalidArgument, "over %d parts", maxUploadParts))
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			// Part.FileName() keeps only the base name; the SDK puts the whole path there.
			_, dp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
			name := dp["filename"]
			target := qpath
			if target == "" {
				target = name
			} else if len(out) > 0 {
				fail(errf(codeInvalidArgument, "the path parameter names one file, and the body has several"))
				return
			}
			path, e := resolvePath(target, acct)
			if e != nil {
				fail(e)
				return
			}
			if e := a.writeFile(acct, path, part); e != nil {
				fail(e)
				return
			}
			done(path)
		}
		if len(out) == 0 {
			fail(errf(codeInvalidArgument, "no file part in the body"))
			return
		}
	default:
		fail(errf(codeInvalidArgument, "upload as multipart/form-data or application/octet-stream"))
		return
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
