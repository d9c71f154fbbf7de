package main

// Directory watches through inotify: WatchDir (a stream) and CreateWatcher/GetWatcherEvents/
// RemoveWatcher (polled). Events are named relative to the watched directory.

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

const (
	maxWatchers     = 256
	maxWatchDirs    = 8192 // inotify watches per watcher (one per directory)
	maxQueuedEvents = 10000
	watchMask       = syscall.IN_MODIFY | syscall.IN_ATTRIB | syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO |
		syscall.IN_CREATE | syscall.IN_DELETE | syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF | syscall.IN_ONLYDIR
)

type fsEvent struct {
	Name  string     `json:"name"`
	Type  Enum       `json:"type"`
	Entry *entryInfo `json:"entry,omitempty"`
}

type watcher struct {
	a            *agent
	acct         *account
	file         *os.File
	fd           int
	root         string
	recursive    bool
	includeEntry bool

	mu      sync.Mutex
	wds     map[int32]string // watch descriptor → directory
	queue   []fsEvent
	dropped int
	notify  chan struct{} // a token when the queue gets events
	done    chan struct{} // closed when the watch ends (root gone, or closed)
	closeMu sync.Once
}

type watchReq struct {
	Path          string `json:"path"`
	Recursive     bool   `json:"recursive"`
	IncludeEntry  bool   `json:"includeEntry"`
	IncludeEntry2 bool   `json:"include_entry"`
	AllowNetwork  bool   `json:"allowNetworkMounts"`
}

func (a *agent) newWatcher(c *call, req *watchReq) (*watcher, *rpcError) {
	root, e := resolvePath(req.Path, c.user)
	if e != nil {
		return nil, e
	}
	a.mu.Lock()
	n := a.watchCount
	if n < maxWatchers {
		a.watchCount++
	}
	a.mu.Unlock()
	if n >= maxWatchers {
		return nil, errf(codeResourceExhausted, "%d watches are open", maxWatchers)
	}
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		a.releaseWatch()
		return nil, errf(codeResourceExhausted, "inotify: %v", err)
	}
	w := &watcher{a: a, acct: c.user, fd: fd, file: os.NewFile(uintptr(fd), "inotify"), root: root,
		recursive: req.Recursive, includeEntry: req.IncludeEntry || req.IncludeEntry2,
		wds: map[int32]string{}, notify: make(chan struct{}, 1), done: make(chan struct{})}
	err = a.asUser(c.user, func() error {
		fi, err := os.Stat(root)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return errf(codeInvalidArgument, "%s is not a directory", root)
		}
		return w.add(root, true)
	})
	if err != nil {
		w.close()
		return nil, fsError(err, root)
	}
	go w.read()
	return w, nil
}

func (a *agent) releaseWatch() {
	a.mu.Lock()
	a.watchCount--
	a.mu.Unlock()
}

// add watches dir, and (recursive) its subdirectories; the caller runs as the watcher's user.
func (w *watcher) add(dir string, top bool) error {
	w.mu.Lock()
	full := len(w.wds) >= maxWatchDirs
	w.mu.Unlock()
	if full {
		return errf(codeResourceExhausted, "over %d directories under %s", maxWatchDirs, w.root)
	}
	mask := uint32(watchMask)
	if !top {
		mask |= syscall.IN_DONT_FOLLOW
	}
	wd, err := syscall.InotifyAddWatch(w.fd, dir, mask)
	if err != nil {
		if top {
			return err
		}
		return nil // gone or unreadable meanwhile: skip it
	}
	w.mu.Lock()
	w.wds[int32(wd)] = dir
	w.mu.Unlock()
	if !w.recursive {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, de := range ents {
		if de.IsDir() {
			if err := w.add(filepath.Join(dir, de.Name()), false); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *watcher) close() {
	w.closeMu.Do(func() {
		w.file.Close()
		close(w.done)
		w.a.releaseWatch()
	})
}

func (w *watcher) push(ev fsEvent) {
	w.mu.Lock()
	if len(w.queue) >= maxQueuedEvents {
		w.queue = w.queue[1:]
		w.dropped++
	}
	w.queue = append(w.queue, ev)
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *watcher) take() []fsEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.queue
	w.queue = nil
	return q
}

// read decodes inotify records: a 16-byte header (wd, mask, cookie, len) then len bytes of name.
func (w *watcher) read() {
	defer w.close()
	buf := make([]byte, 64<<10)
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			wd := int32(binary.LittleEndian.Uint32(buf[off:]))
			mask := binary.LittleEndian.Uint32(buf[off+4:])
			nameLen := int(binary.LittleEndian.Uint32(buf[off+12:]))
			start := off + syscall.SizeofInotifyEvent
			if nameLen < 0 || nameLen > n-start {
				break // a record the kernel would not write
			}
			name := string(trimNul(buf[start : start+nameLen]))
			off = start + nameLen
			if !w.handle(wd, mask, name) {
				return
			}
		}
	}
}

func trimNul(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

// handle turns one record into an event; false ends the watch (its directory is gone).
func (w *watcher) handle(wd int32, mask uint32, name string) bool {
	w.mu.Lock()
	dir, ok := w.wds[wd]
	if mask&syscall.IN_IGNORED != 0 {
		delete(w.wds, wd)
	}
	w.mu.Unlock()
	if !ok {
		return true
	}
	if mask&syscall.IN_IGNORED != 0 {
		return dir != w.root
	}
	if name == "" {
		return true // the directory's own DELETE_SELF/MOVE_SELF: its parent reports it, IN_IGNORED ends it
	}
	full := filepath.Join(dir, name)
	rel, err := filepath.Rel(w.root, full)
	if err != nil {
		rel = full
	}
	var typ Enum
	switch {
	case mask&(syscall.IN_CREATE|syscall.IN_MOVED_TO) != 0:
		typ = "EVENT_TYPE_CREATE"
		if w.recursive && mask&syscall.IN_ISDIR != 0 {
			_ = w.a.asUser(w.acct, func() error { return w.add(full, false) })
		}
	case mask&syscall.IN_MODIFY != 0:
		typ = "EVENT_TYPE_WRITE"
	case mask&syscall.IN_DELETE != 0:
		typ = "EVENT_TYPE_REMOVE"
	case mask&syscall.IN_MOVED_FROM != 0:
		typ = "EVENT_TYPE_RENAME"
	case mask&syscall.IN_ATTRIB != 0:
		typ = "EVENT_TYPE_CHMOD"
	default:
		return true
	}
	ev := fsEvent{Name: rel, Type: typ}
	if w.includeEntry && typ != "EVENT_TYPE_REMOVE" && typ != "EVENT_TYPE_RENAME" {
		if e, err := w.a.statEntry(w.acct, full); err == nil {
			ev.Entry = e
		}
	}
	w.push(ev)
	return true
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (a *agent) watchMethods() map[string]*method {
	return map[string]*method{
		"/filesystem.Filesystem/WatchDir": {stream: func(c *call, body []byte, send func(interface{}) error) *rpcError {
			var req watchReq
			if e := decodeJSON(body, &req); e != nil {
				return e
			}
			w, e := a.newWatcher(c, &req)
			if e != nil {
				return e
			}
			defer w.close()
			type resp struct {
				Start      *struct{} `json:"start,omitempty"`
				Filesystem *fsEvent  `json:"filesystem,omitempty"`
				Keepalive  *struct{} `json:"keepalive,omitempty"`
			}
			if send(resp{Start: &struct{}{}}) != nil {
				return errf(codeCanceled, "client gone")
			}
			var tick <-chan time.Time
			if d := keepaliveInterval(c.header.Get("Keepalive-Ping-Interval")); d > 0 {
				t := time.NewTicker(d)
				defer t.Stop()
				tick = t.C
			}
			flush := func() bool {
				for _, ev := range w.take() {
					ev := ev
					if send(resp{Filesystem: &ev}) != nil {
						return false
					}
				}
				return true
			}
			for {
				select {
				case <-w.notify:
					if !flush() {
						return errf(codeCanceled, "client gone")
					}
				case <-tick:
					if send(resp{Keepalive: &struct{}{}}) != nil {
						return errf(codeCanceled, "client gone")
					}
				case <-w.done:
					flush()
					return nil
				case <-c.ctx.Done():
					return ctxError(c.ctx)
				}
			}
		}},
		"/filesystem.Filesystem/CreateWatcher": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req watchReq
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			w, e := a.newWatcher(c, &req)
			if e != nil {
				return nil, e
			}
			id := newID()
			a.mu.Lock()
			a.watchers[id] = w
			a.mu.Unlock()
			return struct {
				WatcherID string `json:"watcherId"`
			}{id}, nil
		}},
		"/filesystem.Filesystem/GetWatcherEvents": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			w, e := a.findWatcher(body)
			if e != nil {
				return nil, e
			}
			evs := w.take()
			if evs == nil {
				evs = []fsEvent{}
			}
			return struct {
				Events []fsEvent `json:"events"`
			}{evs}, nil
		}},
		"/filesystem.Filesystem/RemoveWatcher": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			w, e := a.findWatcher(body)
			if e != nil {
				return nil, e
			}
			a.mu.Lock()
			for id, x := range a.watchers {
				if x == w {
					delete(a.watchers, id)
				}
			}
			a.mu.Unlock()
			w.close()
			return empty{}, nil
		}},
	}
}

func (a *agent) findWatcher(body []byte) (*watcher, *rpcError) {
	var req struct {
		ID  string `json:"watcherId"`
		ID2 string `json:"watcher_id"`
	}
	if e := decodeJSON(body, &req); e != nil {
		return nil, e
	}
	id := req.ID
	if id == "" {
		id = req.ID2
	}
	if id == "" {
		return nil, errf(codeInvalidArgument, "no watcher id")
	}
	a.mu.Lock()
	w := a.watchers[id]
	a.mu.Unlock()
	if w == nil {
		return nil, errf(codeNotFound, "no watcher %.40q", id)
	}
	return w, nil
}
