package main

// The agent's HTTP surface: envd's plain endpoints (/health, /init, /envs, /metrics, /files) and the
// Connect services, behind the access token once /init sets one.

import (
	"bufio"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	maxInitBody = 1 << 20
	maxEnvVars  = 1024
	version     = "0.1.0"
)

type agent struct {
	self     *account
	setClock bool
	methods  map[string]*method
	procs    processTable

	mu             sync.Mutex
	token          string
	envs           map[string]string
	defaultUser    string
	defaultWorkdir string
	watchers       map[string]*watcher
	watchCount     int
	cpuLast        [2]uint64 // busy, total jiffies at the last /metrics
}

func newAgent(setClock bool) *agent {
	a := &agent{self: selfAccount(), setClock: setClock, envs: map[string]string{}, watchers: map[string]*watcher{}}
	a.procs.procs = map[uint32]*process{}
	a.methods = a.processMethods()
	for k, v := range a.fsMethods() {
		a.methods[k] = v
	}
	return a
}

func writeJSONError(w http.ResponseWriter, status int, format string, args ...interface{}) {
	b, _ := json.Marshal(struct {
		Message string `json:"message"`
		Code    int    `json:"code"`
	}{fmt.Sprintf(format, args...), status})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// authorized checks X-Access-Token against the token /init set (any request passes before that).
func (a *agent) authorized(r *http.Request) bool {
	a.mu.Lock()
	tok := a.token
	a.mu.Unlock()
	if tok == "" {
		return true
	}
	got := r.Header.Get("X-Access-Token")
	return subtle.ConstantTimeCompare([]byte(got), []byte(tok)) == 1
}

// statusWriter remembers whether the handler wrote anything, for the panic guard.
type statusWriter struct {
	http.ResponseWriter
	wrote bool
}

func (s *statusWriter) WriteHeader(code int) { s.wrote = true; s.ResponseWriter.WriteHeader(code) }
func (s *statusWriter) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

// Hijack hands the connection over (CONNECT tunnels); the handler has then answered.
func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := s.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be taken over")
	}
	c, b, err := h.Hijack()
	if err == nil {
		s.wrote = true
	}
	return c, b, err
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (a *agent) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := &statusWriter{ResponseWriter: rw}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			log.Printf("panic serving %s %.200s: %v\n%s", r.Method, r.URL.Path, v, debug.Stack())
			if !w.wrote {
				writeJSONError(w, http.StatusInternalServerError, "internal error")
			} else {
				panic(http.ErrAbortHandler) // a half-written response: drop the connection
			}
		}
	}()
	if r.Method == http.MethodConnect {
		a.serveConnect(w, r)
		return
	}
	path := r.URL.Path
	if path == "/health" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			writeJSONError(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if m := a.methods[path]; m != nil {
		if !a.authorized(r) {
			writeUnaryError(w, errf(codeUnauthenticated, "missing or wrong X-Access-Token"))
			return
		}
		a.serveRPC(w, r, m)
		return
	}
	switch path {
	case "/files":
		a.serveFiles(w, r) // checks the token itself: a signed URL may stand in for it
		return
	case "/init", "/envs", "/metrics":
	default:
		writeJSONError(w, http.StatusNotFound, "no such endpoint")
		return
	}
	if !a.authorized(r) {
		writeJSONError(w, http.StatusUnauthorized, "missing or wrong X-Access-Token")
		return
	}
	switch path {
	case "/init":
		if r.Method != http.MethodPost {
			writeJSONError(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		a.serveInit(w, r)
	case "/envs":
		if r.Method != http.MethodGet {
			writeJSONError(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		a.mu.Lock()
		b, _ := json.Marshal(a.envs)
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	case "/metrics":
		if r.Method != http.MethodGet {
			writeJSONError(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		b, _ := json.Marshal(a.metrics())
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	}
}

type initRequest struct {
	AccessToken    *string           `json:"accessToken"`
	EnvVars        map[string]string `json:"envVars"`
	DefaultUser    *string           `json:"defaultUser"`
	DefaultWorkdir *string           `json:"defaultWorkdir"`
	Timestamp      *time.Time        `json:"timestamp"`
	// vireo's own: host bytes for the kernel's CRNG (entropy.go), sent to each clone.
	VireoEntropy *string `json:"vireoEntropy"`
}

func (a *agent) serveInit(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxInitBody+1))
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, "reading the request: %v", err)
		return
	}
	if len(body) > maxInitBody {
		writeJSONError(w, http.StatusRequestEntityTooLarge, "request is over %d bytes", maxInitBody)
		return
	}
	var req initRequest
	if e := decodeJSON(body, &req); e != nil {
		writeJSONError(w, http.StatusBadRequest, "%s", e.Message)
		return
	}
	if len(req.EnvVars) > maxEnvVars {
		writeJSONError(w, http.StatusBadRequest, "over %d environment variables", maxEnvVars)
		return
	}
	for k, v := range req.EnvVars {
		if !validEnvName(k) || strings.IndexByte(v, 0) >= 0 || len(v) > 128<<10 {
			writeJSONError(w, http.StatusBadRequest, "bad environment variable %.60q", k)
			return
		}
	}
	if req.AccessToken != nil && (len(*req.AccessToken) > 1024 || strings.ContainsAny(*req.AccessToken, "\r\n\x00")) {
		writeJSONError(w, http.StatusBadRequest, "bad access token")
		return
	}
	if req.DefaultUser != nil && *req.DefaultUser != "" {
		if _, e := a.requestUser("", *req.DefaultUser); e != nil {
			writeJSONError(w, http.StatusBadRequest, "default user: %s", e.Message)
			return
		}
	}
	if req.DefaultWorkdir != nil && *req.DefaultWorkdir != "" {
		d := *req.DefaultWorkdir
		if len(d) > maxPathLen || !strings.HasPrefix(d, "/") || strings.IndexByte(d, 0) >= 0 {
			writeJSONError(w, http.StatusBadRequest, "default workdir must be an absolute path")
			return
		}
	}
	if req.VireoEntropy != nil {
		if len(*req.VireoEntropy) > 4*maxEntropyBytes {
			writeJSONError(w, http.StatusBadRequest, "vireoEntropy is over %d bytes", maxEntropyBytes)
			return
		}
		if err := addEntropy(*req.VireoEntropy); err != nil {
			writeJSONError(w, http.StatusBadRequest, "%v", err)
			return
		}
	}
	if req.Timestamp != nil && a.setClock && os.Geteuid() == 0 {
		if d := time.Since(*req.Timestamp); d > 50*time.Millisecond || d < -50*time.Millisecond {
			tv := syscall.NsecToTimeval(req.Timestamp.UnixNano())
			if err := syscall.Settimeofday(&tv); err != nil {
				log.Printf("init: setting the clock: %v", err)
			}
		}
	}
	a.mu.Lock()
	if req.AccessToken != nil {
		a.token = *req.AccessToken
	}
	for k, v := range req.EnvVars {
		a.envs[k] = v
	}
	if req.DefaultUser != nil {
		a.defaultUser = *req.DefaultUser
	}
	if req.DefaultWorkdir != nil {
		a.defaultWorkdir = *req.DefaultWorkdir
	}
	a.mu.Unlock()
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

type metrics struct {
	Ts         int64   `json:"ts"`
	CPUCount   int     `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"`
	MemUsed    uint64  `json:"mem_used"`
	DiskUsed   uint64  `json:"disk_used"`
	DiskTotal  uint64  `json:"disk_total"`
}

func (a *agent) metrics() metrics {
	m := metrics{Ts: time.Now().Unix(), CPUCount: runtime.NumCPU()}
	if f, err := os.Open("/proc/stat"); err == nil {
		sc := bufio.NewScanner(f)
		if sc.Scan() {
			fields := strings.Fields(sc.Text())
			var total, idle uint64
			for i, s := range fields[1:] {
				v, _ := strconv.ParseUint(s, 10, 64)
				total += v
				if i == 3 || i == 4 { // idle, iowait
					idle += v
				}
			}
			busy := total - idle
			a.mu.Lock()
			if dt := total - a.cpuLast[1]; a.cpuLast[1] != 0 && dt > 0 {
				m.CPUUsedPct = float64(busy-a.cpuLast[0]) * 100 / float64(dt)
			}
			a.cpuLast = [2]uint64{busy, total}
			a.mu.Unlock()
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		var total, avail uint64
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 2 {
				continue
			}
			v, _ := strconv.ParseUint(fs[1], 10, 64)
			switch fs[0] {
			case "MemTotal:":
				total = v * 1024
			case "MemAvailable:":
				avail = v * 1024
			}
		}
		f.Close()
		m.MemTotal = total
		if avail <= total {
			m.MemUsed = total - avail
		}
	}
	var st syscall.Statfs_t
	if syscall.Statfs("/", &st) == nil {
		m.DiskTotal = st.Blocks * uint64(st.Bsize)
		m.DiskUsed = (st.Blocks - st.Bfree) * uint64(st.Bsize)
	}
	return m
}
