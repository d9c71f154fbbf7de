package main

// filesystem.Filesystem: Stat, ListDir, MakeDir, Move, Remove (the watcher calls are in watch.go).

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unicode/utf8"
)

const (
	maxPathLen     = 4096
	maxListEntries = 100000
	maxListDepth   = 1024
)

// resolvePath checks a path a request names and makes it absolute: relative paths (and ~) are from the
// user's home. It does not confine the path: the guest is the user's machine, and the kernel checks
// each operation against the user's permissions (asUser).
func resolvePath(p string, acct *account) (string, *rpcError) {
	if p == "" {
		return "", errf(codeInvalidArgument, "empty path")
	}
	if len(p) > maxPathLen {
		return "", errf(codeInvalidArgument, "path is over %d bytes", maxPathLen)
	}
	if strings.IndexByte(p, 0) >= 0 || !utf8.ValidString(p) {
		return "", errf(codeInvalidArgument, "path has a NUL byte or is not UTF-8")
	}
	if p == "~" {
		p = acct.home
	} else if strings.HasPrefix(p, "~/") {
		p = filepath.Join(acct.home, p[2:])
	} else if !filepath.IsAbs(p) {
		p = filepath.Join(acct.home, p)
	}
	return filepath.Clean(p), nil
}

// fsError maps an OS error to a Connect error.
func fsError(err error, what string) *rpcError {
	var re *rpcError
	if errors.As(err, &re) {
		return re
	}
	e := unwrapErr(err)
	switch {
	case errors.Is(e, os.ErrNotExist):
		return errf(codeNotFound, "%s: no such file or directory", what)
	case errors.Is(e, os.ErrExist):
		return errf(codeAlreadyExists, "%s: already exists", what)
	case errors.Is(e, os.ErrPermission):
		return errf(codePermissionDenied, "%s: permission denied", what)
	case e == syscall.ENOTDIR:
		return errf(codeInvalidArgument, "%s: not a directory", what)
	case e == syscall.EISDIR:
		return errf(codeInvalidArgument, "%s: is a directory", what)
	case e == syscall.ENOSPC || e == syscall.EDQUOT:
		return errf(codeResourceExhausted, "%s: no space left", what)
	case e == syscall.ENAMETOOLONG || e == syscall.ELOOP || e == syscall.EINVAL || e == syscall.ENXIO:
		return errf(codeInvalidArgument, "%s: %v", what, e)
	case e == syscall.ENOTEMPTY || e == syscall.EXDEV || e == syscall.EBUSY:
		return errf(codeFailedPrecondition, "%s: %v", what, e)
	}
	return errf(codeInternal, "%s: %v", what, e)
}

type entryInfo struct {
	Name          string    `json:"name"`
	Type          Enum      `json:"type"`
	Path          string    `json:"path"`
	Size          I64       `json:"size"`
	Mode          uint32    `json:"mode"`
	Permissions   string    `json:"permissions"`
	Owner         string    `json:"owner"`
	Group         string    `json:"group"`
	ModifiedTime  Timestamp `json:"modifiedTime"`
	SymlinkTarget *string   `json:"symlinkTarget,omitempty"`
}

// entryOf describes path from its lstat.
func entryOf(path string, fi os.FileInfo) *entryInfo {
	e := &entryInfo{
		Name: filepath.Base(path), Path: path, Size: I64(fi.Size()),
		Permissions: fi.Mode().String(), ModifiedTime: Timestamp(fi.ModTime()),
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		e.Type = "FILE_TYPE_SYMLINK"
		if t, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = &t
		}
	case fi.IsDir():
		e.Type = "FILE_TYPE_DIRECTORY"
	case fi.Mode().IsRegular():
		e.Type = "FILE_TYPE_FILE"
	default:
		e.Type = "FILE_TYPE_UNSPECIFIED"
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Mode = st.Mode & 0o7777
		e.Owner, e.Group = ownerNames(st.Uid, st.Gid)
	} else {
		e.Mode = uint32(fi.Mode().Perm())
	}
	return e
}

type pathReq struct {
	Path string `json:"path"`
}

type entryRes struct {
	Entry *entryInfo `json:"entry"`
}

func (a *agent) statEntry(acct *account, path string) (*entryInfo, error) {
	var e *entryInfo
	err := a.asUser(acct, func() error {
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		e = entryOf(path, fi)
		return nil
	})
	return e, err
}

func (a *agent) fsMethods() map[string]*method {
	m := map[string]*method{
		"/filesystem.Filesystem/Stat": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req pathReq
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			p, e := resolvePath(req.Path, c.user)
			if e != nil {
				return nil, e
			}
			ent, err := a.statEntry(c.user, p)
			if err != nil {
				return nil, fsError(err, p)
			}
			return entryRes{ent}, nil
		}},
		"/filesystem.Filesystem/MakeDir": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req pathReq
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			p, e := resolvePath(req.Path, c.user)
			if e != nil {
				return nil, e
			}
			var ent *entryInfo
			err := a.asUser(c.user, func() error {
				if fi, err := os.Lstat(p); err == nil {
					if fi.IsDir() {
						return errf(codeAlreadyExists, "directory %s already exists", p)
					}
					return errf(codeAlreadyExists, "%s exists and is not a directory", p)
				}
				if err := os.MkdirAll(p, 0o755); err != nil {
					return err
				}
				fi, err := os.Lstat(p)
				if err != nil {
					return err
				}
				ent = entryOf(p, fi)
				return nil
			})
			if err != nil {
				return nil, fsError(err, p)
			}
			return entryRes{ent}, nil
		}},
		"/filesystem.Filesystem/Move": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req struct {
				Source      string `json:"source"`
				Destination string `json:"destination"`
			}
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			src, e := resolvePath(req.Source, c.user)
			if e != nil {
				return nil, e
			}
			dst, e := resolvePath(req.Destination, c.user)
			if e != nil {
				return nil, e
			}
			var ent *entryInfo
			err := a.asUser(c.user, func() error {
				if _, err := os.Lstat(src); err != nil {
					return err
				}
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					return err
				}
				if err := os.Rename(src, dst); err != nil {
					return err
				}
				fi, err := os.Lstat(dst)
				if err != nil {
					return err
				}
				ent = entryOf(dst, fi)
				return nil
			})
			if err != nil {
				return nil, fsError(err, src+" → "+dst)
			}
			return entryRes{ent}, nil
		}},
		"/filesystem.Filesystem/Remove": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req pathReq
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			p, e := resolvePath(req.Path, c.user)
			if e != nil {
				return nil, e
			}
			if p == "/" {
				return nil, errf(codeInvalidArgument, "refusing to remove /")
			}
			err := a.asUser(c.user, func() error {
				if _, err := os.Lstat(p); err != nil {
					return err
				}
				return os.RemoveAll(p)
			})
			if err != nil {
				return nil, fsError(err, p)
			}
			return empty{}, nil
		}},
		"/filesystem.Filesystem/ListDir": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req struct {
				Path  string `json:"path"`
				Depth U32    `json:"depth"`
			}
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			p, e := resolvePath(req.Path, c.user)
			if e != nil {
				return nil, e
			}
			depth := int(req.Depth)
			if depth < 1 {
				depth = 1
			}
			if depth > maxListDepth {
				depth = maxListDepth
			}
			var out []*entryInfo
			err := a.asUser(c.user, func() error {
				fi, err := os.Stat(p)
				if err != nil {
					return err
				}
				if !fi.IsDir() {
					return errf(codeInvalidArgument, "%s is not a directory", p)
				}
				return listDir(p, depth, &out, c)
			})
			if err != nil {
				return nil, fsError(err, p)
			}
			if out == nil {
				out = []*entryInfo{}
			}
			return struct {
				Entries []*entryInfo `json:"entries"`
			}{out}, nil
		}},
	}
	for k, v := range a.watchMethods() {
		m[k] = v
	}
	return m
}

// listDir appends dir's entries, and theirs down to depth levels; it does not follow symlinks.
func listDir(dir string, depth int, out *[]*entryInfo, c *call) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, de := range ents {
		if c.ctx.Err() != nil {
			return ctxError(c.ctx)
		}
		if len(*out) >= maxListEntries {
			return errf(codeResourceExhausted, "over %d entries: list with a smaller depth", maxListEntries)
		}
		p := filepath.Join(dir, de.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			continue // removed meanwhile
		}
		*out = append(*out, entryOf(p, fi))
		if depth > 1 && fi.IsDir() {
			if err := listDir(p, depth-1, out, c); err != nil && !errors.Is(unwrapErr(err), os.ErrPermission) {
				var re *rpcError
				if errors.As(err, &re) {
					return err
				}
			}
		}
	}
	return nil
}
