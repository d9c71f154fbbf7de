package main

// CONNECT tunnels: `CONNECT 127.0.0.1:PORT HTTP/1.1` on a stream to the agent opens a TCP connection
// to PORT on the guest's loopback and, after `200 Connection Established`, the stream carries its
// bytes both ways. The host reaches guest TCP services this way without a guest NIC. Only loopback
// targets are served: the agent must not become a way from the host into other networks the guest
// can reach.

import (
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	maxTunnels      = 256
	tunnelDialLimit = 5 * time.Second
	tunnelBufSize   = 32 << 10
)

// tunnels counts the open tunnels against maxTunnels.
var tunnels = make(chan struct{}, maxTunnels)

// ownPorts are the agent's own listening ports (vsock and TCP): a tunnel to one is refused, so that a
// tunnel cannot loop back into the agent.
var ownPorts = map[uint32]bool{49983: true}

func noteOwnPort(l net.Addr) {
	switch a := l.(type) {
	case *net.TCPAddr:
		ownPorts[uint32(a.Port)] = true
	case vsockAddr:
		ownPorts[a.port] = true
	}
}

// tunnelTarget checks a CONNECT authority and returns the address to dial (an IP literal, never a
// name the guest's resolver or /etc/hosts could point elsewhere), or an HTTP status and message.
func tunnelTarget(r *http.Request) (string, int, string) {
	if strings.HasPrefix(r.RequestURI, "/") || r.URL.Host == "" {
		return "", http.StatusBadRequest, "CONNECT wants host:port"
	}
	host, ps, err := net.SplitHostPort(r.URL.Host)
	if err != nil {
		return "", http.StatusBadRequest, "CONNECT wants host:port"
	}
	port, err := strconv.ParseUint(ps, 10, 32)
	if err != nil || len(ps) > 5 || port < 1 || port > 65535 {
		return "", http.StatusBadRequest, "port must be 1 to 65535"
	}
	var ip net.IP
	if strings.EqualFold(host, "localhost") {
		ip = net.IPv4(127, 0, 0, 1)
	} else if ip = net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", http.StatusForbidden, "only the guest's loopback (127.0.0.1, ::1, localhost) can be reached"
	}
	if ownPorts[uint32(port)] {
		return "", http.StatusForbidden, "port " + ps + " is the agent's own"
	}
	return net.JoinHostPort(ip.String(), ps), 0, ""
}

func (a *agent) serveConnect(w *statusWriter, r *http.Request) {
	w.Header().Set("Connection", "close") // bytes after a refused CONNECT are tunnel data, not requests
	if !a.authorized(r) {
		writeJSONError(w, http.StatusUnauthorized, "missing or wrong X-Access-Token")
		return
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		writeJSONError(w, http.StatusBadRequest, "CONNECT takes no body")
		return
	}
	addr, status, msg := tunnelTarget(r)
	if status != 0 {
		writeJSONError(w, status, "%s", msg)
		return
	}
	select {
	case tunnels <- struct{}{}:
	default:
		writeJSONError(w, http.StatusServiceUnavailable, "%d tunnels are open", maxTunnels)
		return
	}
	release := func() { <-tunnels }
	d := net.Dialer{Timeout: tunnelDialLimit}
	target, err := d.DialContext(r.Context(), "tcp", addr)
	if err != nil {
		release()
		status := http.StatusBadGateway
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			status = http.StatusGatewayTimeout
		}
		msg := err.Error()
		if errors.Is(err, syscall.ECONNREFUSED) {
			msg = "connection refused"
		}
		writeJSONError(w, status, "connect %s: %s", addr, msg)
		return
	}
	conn, brw, err := w.Hijack()
	if err != nil {
		release()
		target.Close()
		writeJSONError(w, http.StatusInternalServerError, "cannot take over the connection: %v", err)
		return
	}
	go func() {
		defer release()
		tunnel(conn, brw.Reader.Buffered(), brw.Reader, target)
	}()
}

// tunnel answers 200 on client and carries bytes between it and target until both directions end.
// early bytes the client sent after its request are already in br.
func tunnel(client net.Conn, early int, br io.Reader, target net.Conn) {
	defer client.Close()
	defer target.Close()
	_ = client.SetDeadline(time.Time{}) // the server's header and write deadlines no longer apply
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		return
	}
	if early > 0 {
		if _, err := io.CopyN(target, br, int64(early)); err != nil {
			return
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go pipe(&wg, target, client)
	go pipe(&wg, client, target)
	wg.Wait()
}

// pipe copies src to dst through a bounded buffer; at src's end it ends dst's write side (the peer
// sees EOF and may still answer), and on an error it closes both, so the other direction ends too.
func pipe(wg *sync.WaitGroup, dst, src net.Conn) {
	defer wg.Done()
	buf := make([]byte, tunnelBufSize)
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	if err == nil && closeWrite(dst) == nil {
		return
	}
	dst.Close()
	src.Close()
}

// closeWrite shuts down conn's sending side: net's CloseWrite, or shutdown(2) on the raw
// vsock/Unix sockets.
func closeWrite(conn net.Conn) error {
	if lc, ok := conn.(*limitConn); ok {
		conn = lc.Conn
	}
	switch c := conn.(type) {
	case interface{ CloseWrite() error }:
		return c.CloseWrite()
	case *sockConn:
		rc, err := c.File.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = syscall.Shutdown(int(fd), syscall.SHUT_WR) }); err != nil {
			return err
		}
		return serr
	}
	log.Printf("tunnel: %T cannot end its write side alone", conn)
	return errors.New("no half-close")
}
