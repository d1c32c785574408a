package meter_test

import (
	"errors"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// serve runs srv on a loopback port and returns its URL and a stop func.
func serve(tb testing.TB, srv *http.Server) (string, func()) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			tb.Error(err)
		}
	}()
	return "http://" + ln.Addr().String() + "/obj", func() {
		srv.Close()
		<-done
	}
}

// cpuTime is the process's user + system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
