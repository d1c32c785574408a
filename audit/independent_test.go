package audit_test

// An auditor who does not run provgate's code checks a bundle with
// golang.org/x/mod/sumdb/note, github.com/transparency-dev/merkle and
// go-jose, reading docs/AUDIT.md only: nothing here imports the audit,
// verify or meter packages to check anything (the world helper makes the
// bundle, and is all they are used for).

import (
	"bytes"
	"crypto"
	_ "crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/audit"
)

var update = flag.Bool("update", false, "rewrite testdata/bundle.json")

// thirdPartyBundle is the bundle as docs/AUDIT.md describes it.
type thirdPartyBundle struct {
	Format   string `json:"format"`
	Contract string `json:"contract_id"`
	Log      struct {
		Origin        string `json:"origin"`
		CheckpointKey string `json:"checkpoint_key"`
	} `json:"log"`
	Checkpoint  string   `json:"checkpoint"`
	Entries     [][]byte `json:"entries"`
	Checkpoints []struct {
		Checkpoint  string   `json:"checkpoint"`
		Consistency [][]byte `json:"consistency"`
	} `json:"checkpoints"`
	Keys struct {
		Sidecars map[string]jose.JSONWebKey `json:"sidecars"`
	} `json:"keys"`
	Ledger struct {
		ID string `json:"id"`
	} `json:"ledger"`
	Batches []struct {
		Batch string `json:"batch"`
		Entry []byte `json:"entry"`
		Proof string `json:"proof"`
		Rows  *struct {
			Count uint64 `json:"count"`
			Root  []byte `json:"root"`
		} `json:"rows"`
	} `json:"batches"`
	Rows []struct {
		Seq   int64    `json:"seq"`
		Batch string   `json:"batch"`
		Index uint64   `json:"index"`
		Row   string   `json:"row"`
		Proof [][]byte `json:"proof"`
	} `json:"rows"`
}

// openCheckpoint checks a signed checkpoint with the log's key and reads
// its size and root.
func openCheckpoint(t *testing.T, v note.Verifier, origin, signed string) (uint64, []byte) {
	t.Helper()
	n, err := note.Open([]byte(signed), note.VerifierList(v))
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != origin {
		t.Fatalf("checkpoint text %q: want origin %q, size, root", n.Text, origin)
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil {
		t.Fatal(err)
	}
	return size, root
}

// verifyIndependently checks a bundle's JSON the way a third party would.
func verifyIndependently(t *testing.T, data []byte) {
	t.Helper()
	var b thirdPartyBundle
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if b.Format != "provgate-audit-bundle/v1" {
		t.Fatalf("format %q", b.Format)
	}
	v, err := note.NewVerifier(b.Log.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	h := rfc6962.DefaultHasher
	size, root := openCheckpoint(t, v, b.Log.Origin, b.Checkpoint)
	if uint64(len(b.Entries)) != size {
		t.Fatalf("%d entries, checkpoint size %d", len(b.Entries), size)
	}
	// The entries are the tree, each chained to the one before.
	tree := testonly.New(h)
	prev := make([]byte, 32)
	var termsText string
	for i, e := range b.Entries {
		var fields struct {
			Seq      uint64 `json:"seq"`
			PrevHash string `json:"prev_hash"`
			Kind     string `json:"kind"`
			Note     string `json:"note"`
		}
		if err := json.Unmarshal(e, &fields); err != nil {
			t.Fatal(err)
		}
		if fields.Seq != uint64(i+1) || fields.PrevHash != fmt.Sprintf("%x", prev) {
			t.Fatalf("entry %d: seq %d prev_hash %s, want %x", i+1, fields.Seq, fields.PrevHash, prev)
		}
		if i == 0 {
			if fields.Kind != "contract" {
				t.Fatalf("entry 1 is %q, want the contract terms", fields.Kind)
			}
			n, err := note.Open([]byte(fields.Note), note.VerifierList(v))
			if err != nil {
				t.Fatalf("terms note: %v", err)
			}
			termsText = n.Text
		}
		prev = h.HashLeaf(e)
		tree.AppendData(e)
	}
	if !bytes.Equal(tree.Hash(), root) {
		t.Fatalf("entries hash to %x, checkpoint root %x", tree.Hash(), root)
	}
	// Earlier checkpoints: consistency proofs to the latest.
	for _, c := range b.Checkpoints {
		oldSize, oldRoot := openCheckpoint(t, v, b.Log.Origin, c.Checkpoint)
		if err := proof.VerifyConsistency(h, oldSize, size, c.Consistency, oldRoot, root); err != nil {
			t.Fatalf("checkpoint of size %d: %v", oldSize, err)
		}
	}
	// Receipts: C2SP tlog-proofs of each batch's entry.
	for _, bt := range b.Batches {
		head, cp, ok := strings.Cut(bt.Proof, "\n\n")
		lines := strings.Split(head, "\n")
		if !ok || lines[0] != "c2sp.org/tlog-proof@v1" || !strings.HasPrefix(lines[1], "index ") {
			t.Fatalf("batch %s: proof %q", bt.Batch, bt.Proof)
		}
		index, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "index "), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		var hashes [][]byte
		for _, l := range lines[2:] {
			hb, err := base64.StdEncoding.DecodeString(l)
			if err != nil {
				t.Fatal(err)
			}
			hashes = append(hashes, hb)
		}
		rsize, rroot := openCheckpoint(t, v, b.Log.Origin, cp)
		if err := proof.VerifyInclusion(h, index, rsize, h.HashLeaf(bt.Entry), hashes, rroot); err != nil {
			t.Fatalf("batch %s: receipt: %v", bt.Batch, err)
		}
		if !bytes.Equal(b.Entries[index], bt.Entry) {
			t.Fatalf("batch %s: not entry %d of the log", bt.Batch, index+1)
		}
		// The batch is signed by its sidecar's key (JWS, EdDSA or ES256).
		var entry struct {
			JWS string `json:"jws"`
		}
		if err := json.Unmarshal(bt.Entry, &entry); err != nil {
			t.Fatal(err)
		}
		jws, err := jose.ParseSignedCompact(entry.JWS, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		key := b.Keys.Sidecars[jws.Signatures[0].Protected.KeyID]
		if tp, err := key.Thumbprint(crypto.SHA256); err != nil || base64.RawURLEncoding.EncodeToString(tp) != jws.Signatures[0].Protected.KeyID {
			t.Fatalf("batch %s: the sidecar key does not hash to its kid", bt.Batch)
		}
		payload, err := jws.Verify(key.Key)
		if err != nil {
			t.Fatalf("batch %s: signature: %v", bt.Batch, err)
		}
		// An aggregate batch signs the root of its rows: the one the
		// disclosed rows are checked against.
		var signed struct {
			Rows *struct {
				Count uint64 `json:"count"`
				Root  []byte `json:"root"`
			} `json:"rows"`
		}
		if err := json.Unmarshal(payload, &signed); err != nil {
			t.Fatal(err)
		}
		if signed.Rows != nil && bt.Rows != nil && (signed.Rows.Count != bt.Rows.Count || !bytes.Equal(signed.Rows.Root, bt.Rows.Root)) {
			t.Fatalf("batch %s: the bundle's row tree is not the signed one", bt.Batch)
		}
	}
	// Disclosed rows: inclusion in their batch's row tree.
	for _, r := range b.Rows {
		var found bool
		for _, bt := range b.Batches {
			if bt.Batch == r.Batch && bt.Rows != nil {
				found = true
				if err := proof.VerifyInclusion(h, r.Index, bt.Rows.Count, h.HashLeaf([]byte(r.Row)), r.Proof, bt.Rows.Root); err != nil {
					t.Fatalf("row seq %d: %v", r.Seq, err)
				}
			}
		}
		if !found || !strings.Contains(r.Row, fmt.Sprintf(`"id":"%s-%d"`, b.Ledger.ID, r.Seq)) {
			t.Fatalf("row seq %d: no batch %s with a row tree, or not the ledger's row", r.Seq, r.Batch)
		}
	}
	// An attestation checks against the contributor's key in the terms.
	var terms struct {
		Terms struct {
			Contributors []struct {
				JWKS jose.JSONWebKeySet `json:"jwks"`
			} `json:"contributors"`
		} `json:"terms"`
	}
	_, body, _ := strings.Cut(termsText, "\n")
	if err := json.Unmarshal([]byte(body), &terms); err != nil {
		t.Fatal(err)
	}
	var entry2 struct {
		JWS string `json:"jws"`
	}
	if err := json.Unmarshal(b.Entries[1], &entry2); err != nil {
		t.Fatal(err)
	}
	jws, err := jose.ParseSignedCompact(entry2.JWS, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	keys := terms.Terms.Contributors[0].JWKS.Key(jws.Signatures[0].Protected.KeyID)
	if len(keys) != 1 {
		t.Fatalf("no contributor key %q in the terms", jws.Signatures[0].Protected.KeyID)
	}
	if _, err := jws.Verify(keys[0].Key); err != nil {
		t.Fatalf("entry 2's attestation: %v", err)
	}
}

// TestBundleVerifiesWithoutProvgate: a fresh bundle of real traffic, and
// the checked-in examples (testdata/bundle.json, aggregate batches;
// testdata/bundle-per-event.json, batches that list their events), verify
// with x/mod's note, transparency-dev/merkle and go-jose alone.
func TestBundleVerifiesWithoutProvgate(t *testing.T) {
	w := newWorld(t, nil)
	w.traffic(t)
	b := w.export(t, audit.ExportOptions{Rows: []int64{4, 5, 6}})
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	verifyIndependently(t, data)
	if *update {
		if err := os.WriteFile(filepath.Join("testdata", "bundle.json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, golden := range []string{"bundle.json", "bundle-per-event.json"} {
		g, err := os.ReadFile(filepath.Join("testdata", golden))
		if err != nil {
			t.Fatal(err)
		}
		verifyIndependently(t, g)
		// And our verifier agrees.
		gb, err := audit.ParseBytes(g)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := audit.Verify(gb, audit.VerifyOptions{}); err != nil {
			t.Fatalf("%s: %v", golden, err)
		}
	}
}
