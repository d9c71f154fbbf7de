// vireo-agent: the guest agent of vireo sandboxes. It speaks envd's protocol (E2B's in-sandbox
// daemon: the process and filesystem Connect services and its HTTP endpoints) on vsock port 49983, so
// that vireo's host side and E2B's unmodified SDK can run commands and move files in a guest.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var listens listFlag
	flag.Var(&listens, "listen", "vsock:PORT, tcp:HOST:PORT or unix:PATH (repeatable; default vsock:49983)")
	setClock := flag.Bool("set-clock", false, "set the system clock from /init's timestamp (in a guest, as root)")
	anyPeer := flag.Bool("vsock-any-peer", false, "serve vsock peers other than the host (CID 2)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("vireo-agent", version)
		return
	}
	if len(listens) == 0 {
		listens = listFlag{"vsock:49983"}
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("vireo-agent: ")
	if os.Geteuid() == 0 {
		if g, err := syscall.Getgroups(); err == nil {
			for _, x := range g {
				rootGroups = append(rootGroups, uint32(x))
			}
		}
	}
	a := newAgent(*setClock)
	// Every listener is open (and its port noted, for tunnels) before any serves.
	ls := make([]net.Listener, 0, len(listens))
	for _, spec := range listens {
		l, err := listen(spec, *anyPeer)
		if err != nil {
			log.Fatalf("%v", err)
		}
		log.Printf("listening on %s (%s)", spec, l.Addr())
		noteOwnPort(l.Addr())
		ls = append(ls, l)
	}
	errc := make(chan error, len(ls))
	for _, l := range ls {
		srv := &http.Server{
			Handler:           a,
			ReadHeaderTimeout: 15 * time.Second,
			IdleTimeout:       10 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          log.Default(),
		}
		go func(l net.Listener) { errc <- srv.Serve(limit(l)) }(l)
	}
	log.Fatalf("serve: %v", <-errc)
}
