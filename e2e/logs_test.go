package e2e_test

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/internal/testenv"
)

// TestLogLinesHaveEachKeyOnce: every JSON log line the sidecar writes
// (the follower's among them: a sync that fails while the registry is
// down) carries each key once; a duplicate key is lost or misread by most
// log pipelines.
func TestLogLinesHaveEachKeyOnce(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("a.bin", randomBytes(t, 100), false)
	var logs testenv.SyncBuffer
	e.sidecar(func(c *sidecar.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	e.front.down.Store(true)
	waitFor(t, "the follower to log a failed sync", 20*time.Second, func() bool {
		return strings.Contains(logs.String(), `"msg":"log sync failed"`)
	})
	e.front.down.Store(false)
	followerLines := 0
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		keys, err := topLevelKeys(line)
		if err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, line)
		}
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				t.Errorf("key %q twice in: %s", k, line)
			}
			seen[k] = true
		}
		if strings.Contains(line, `"part":"follower"`) {
			followerLines++
			if !seen["contract"] {
				t.Errorf("follower line without its contract: %s", line)
			}
		}
	}
	if followerLines == 0 {
		t.Fatal("no follower log lines")
	}
}

// topLevelKeys lists the keys of a JSON object in order, duplicates kept.
func topLevelKeys(line string) ([]string, error) {
	dec := json.NewDecoder(strings.NewReader(line))
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, err
		}
	}
	return keys, nil
}
