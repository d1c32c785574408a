package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/verify/verifytest"
)

// serveLog serves a verifytest log as a registry would (contract,
// checkpoint, events, consistency proofs), whatever it holds.
func serveLog(t *testing.T, l *verifytest.Log, curators *atomic.Pointer[[]string]) string {
	t.Helper()
	id := l.Contract.ContractID
	mux := http.NewServeMux()
	mux.HandleFunc("GET /contracts/{id}", func(w http.ResponseWriter, r *http.Request) {
		c := *l.Contract
		if p := curators.Load(); p != nil {
			c.Curators = *p
		}
		json.NewEncoder(w).Encode(&c)
	})
	mux.HandleFunc("GET /provenance/{id}/checkpoint", func(w http.ResponseWriter, r *http.Request) {
		note, _ := l.Checkpoint(r.Context(), id)
		w.Write(note)
	})
	mux.HandleFunc("GET /provenance/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		p, _ := l.Events(r.Context(), id, since, limit)
		json.NewEncoder(w).Encode(p)
	})
	mux.HandleFunc("GET /provenance/{id}/proof/consistency", func(w http.ResponseWriter, r *http.Request) {
		from, _ := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
		to, _ := strconv.ParseUint(r.URL.Query().Get("to"), 10, 64)
		p, err := l.ConsistencyProof(r.Context(), id, from, to)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(p)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// `verify log` refuses a log in which a contributor replaced a name that
// another one owns, naming the entry; a served contract that names bob a
// curator changes nothing (terms come from the log); with bob a curator in
// the logged terms, its replacement passes.
func TestVerifyLogRefusesForeignReplacement(t *testing.T) {
	alice := verifytest.NewContributor(t, "did:example:alice", jose.EdDSA)
	bob := verifytest.NewContributor(t, "did:example:bob", jose.EdDSA)
	l := verifytest.NewLog(t, "did:example:owned", alice.Info(), bob.Info())
	id := l.Contract.ContractID
	l.AppendAttestation(t, alice.Contribution(t, id, verifytest.Object("img/0001.txt", []byte("alice"))))
	var curators atomic.Pointer[[]string]
	url := serveLog(t, l, &curators)
	mustCLI(t, "verify", "log", "--registry", url, "--contract", id)

	l.AppendAttestation(t, bob.Contribution(t, id, verifytest.Object("img/0001.txt", []byte("poisoned"))))
	code, _, errs := cli(t, "verify", "log", "--registry", url, "--contract", id)
	if code != 1 || !strings.Contains(errs, "entry 3") || !strings.Contains(errs, "owned by") {
		t.Fatalf("verify log of a foreign replacement: exit %d, %s", code, errs)
	}

	curators.Store(&[]string{bob.ID})
	code, _, errs = cli(t, "verify", "log", "--registry", url, "--contract", id)
	if code != 1 || !strings.Contains(errs, "owned by") {
		t.Fatalf("verify log with a curator only in the served contract: exit %d, %s", code, errs)
	}

	l2 := verifytest.NewLog(t, "did:example:owned", alice.Info(), bob.Info())
	l2.Contract.Curators = []string{bob.ID}
	l2.SetTerms(t, l2.Contract)
	l2.AppendAttestation(t, alice.Contribution(t, id, verifytest.Object("img/0001.txt", []byte("alice"))))
	l2.AppendAttestation(t, bob.Contribution(t, id, verifytest.Object("img/0001.txt", []byte("curated"))))
	if out := mustCLI(t, "verify", "log", "--registry", serveLog(t, l2, new(atomic.Pointer[[]string])), "--contract", id); !strings.Contains(out, "OK") {
		t.Fatalf("with bob a curator in the logged terms: %s", out)
	}
}
