package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// daemonShutdownTimeout bounds the drain of a daemon's HTTP server.
const daemonShutdownTimeout = 10 * time.Second

// serveUntilDone serves hs on ln until ctx ends (or the server fails),
// then calls stopping (nil: nothing; e.g. to end long-lived streams that
// Shutdown would otherwise wait for) and shuts the server down gracefully,
// closing it when the drain takes longer than daemonShutdownTimeout.
func serveUntilDone(ctx context.Context, what string, ln net.Listener, hs *http.Server, stopping func()) error {
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s: %w", what, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), daemonShutdownTimeout)
	defer cancel()
	if stopping != nil {
		stopping()
	}
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
