package e2e_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// wdsShard is a WebDataset shard of n samples, each a .jpg (random bytes)
// and a .cls member.
func wdsShard(t testing.TB, shard, n, jpgSize int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for k := range n {
		for _, m := range []struct {
			ext  string
			body []byte
		}{{"jpg", randomBytes(t, jpgSize)}, {"cls", []byte(fmt.Sprint((shard + k) % 10))}} {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("s%06d_%d.%s", shard, k, m.ext), Mode: 0o644,
				Size: int64(len(m.body)), Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			tw.Write(m.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func shardIndex(t testing.TB, b []byte) *contract.ShardIndex {
	t.Helper()
	x, err := contract.BuildShardIndex(bytes.NewReader(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// contributeDir runs `provgate contribute` (the binary) on dir.
func contributeDir(t testing.TB, e *env, dir string) string {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "alice.jwk")
	if err := verify.SaveKey(keyFile, e.alice.Key); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(provgateBinary(t), "contribute", "--registry", e.reg.URL, "--contract", e.c.ContractID, "--key", keyFile,
		"--s3-endpoint", e.minio.URL(), "--progress-interval", "0s", dir)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+testenv.MinIOAccessKey, "AWS_SECRET_ACCESS_KEY="+testenv.MinIOSecretKey)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("provgate contribute: %v\n%s", err, out)
	}
	return string(out)
}

// getMember reads one member of a shard by name.
func getMember(t testing.TB, base, id, shard, member, job string) (int, []byte, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/contracts/"+id+"/objects/"+shard+"?member="+url.QueryEscape(member), nil)
	req.Header.Set("X-Provgate-Job", job)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// TestShardsEndToEnd: 100 WebDataset shards contributed by `provgate
// contribute` (member index in the claim) are read whole by a
// WebDataset-style reader (Python's tarfile streaming over HTTP) and by
// member from Go; a shard whose stored bytes were changed in MinIO after
// contribution is refused whole and by member (502), and so is one whose
// attested index does not describe its (digest-correct) bytes. The
// registry's billed samples after sync are the attested member counts of
// what was read.
func TestShardsEndToEnd(t *testing.T) {
	e := newEnv(t, envOpt{})
	py := debianPython(t, "tarfile")
	dir := t.TempDir()
	const shards, perShard = 100, 3
	tars := map[string][]byte{}
	for i := range shards {
		name := fmt.Sprintf("shard-%06d.tar", i)
		tars[name] = wdsShard(t, i, perShard, 300+i)
		if err := os.WriteFile(filepath.Join(dir, name), tars[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out := contributeDir(t, e, dir); !strings.Contains(out, "contributed 100 objects") {
		t.Fatalf("contribute: %s", out)
	}
	// Tamper shard 99 in MinIO after contribution: one byte of a member.
	bad := bytes.Clone(tars["shard-000099.tar"])
	bad[shardIndex(t, bad).Members[0].Offset] ^= 0xff
	e.putRaw("shard-000099.tar", bad)
	// A shard whose attested index lies about a member's sha256 (well
	// formed: the registry cannot tell; the sidecar checks the tar).
	lie := wdsShard(t, 100, 2, 50)
	e.putRaw("liar.tar", lie)
	obj := registrytest.Object("liar.tar", lie)
	obj.Shard = shardIndex(t, lie)
	obj.Shard.Members[2].SHA256 = sha([]byte("something else"))
	e.alice.AttestBatch(t, e.c.ContractID, []contract.ObjectClaim{obj})

	e.put("plain.bin", []byte("not a shard"), false)
	sc := e.sidecar(nil)
	id := e.c.ContractID
	base := sc.URL() + "/v1/contracts/" + id + "/objects/"

	// Whole shards 0..49, WebDataset-style.
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, filepath.Join(root, "examples", "webdataset", "read_shards.py"), base+"shard-{000000..000049}.tar", "--job", "wds", "--epoch", "1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("read_shards.py: %v\n%s", err, out)
	}
	seen := 0
	sc2 := bufio.NewScanner(bytes.NewReader(out))
	for sc2.Scan() {
		var s struct {
			Shard, Key string
			Members    map[string]string
		}
		if err := json.Unmarshal(sc2.Bytes(), &s); err != nil {
			t.Fatal(err)
		}
		x := shardIndex(t, tars[s.Shard])
		for ext, h := range s.Members {
			i := x.Member(s.Key + "." + ext)
			if i < 0 || x.Members[i].SHA256 != h {
				t.Fatalf("%s %s.%s: the reader got bytes that are not the contributed member", s.Shard, s.Key, ext)
			}
		}
		if len(s.Members) != 2 {
			t.Fatalf("%s %s: %d members, want 2", s.Shard, s.Key, len(s.Members))
		}
		seen++
	}
	if seen != 50*perShard {
		t.Fatalf("the reader saw %d samples, want %d", seen, 50*perShard)
	}

	// Members by name, from Go: k0.jpg and k0.cls are one sample; k1.jpg
	// another; k0.jpg again opens a new pass over the shard.
	s50 := "shard-000050.tar"
	x50 := shardIndex(t, tars[s50])
	for _, m := range []string{"s000050_0.jpg", "s000050_0.cls", "s000050_1.jpg", "s000050_0.jpg"} {
		code, b, h := getMember(t, sc.URL(), id, s50, m, "members")
		mm := x50.Members[x50.Member(m)]
		if code != http.StatusOK || sha(b) != mm.SHA256 || h.Get("ETag") != `"`+mm.SHA256+`"` {
			t.Fatalf("member %s: %d, %d bytes, ETag %s; want 200 and its attested bytes", m, code, len(b), h.Get("ETag"))
		}
	}
	if code, _, _ := getMember(t, sc.URL(), id, s50, "nope.jpg", "members"); code != http.StatusNotFound {
		t.Fatalf("an unknown member: %d, want 404", code)
	}
	if code, _, _ := getMember(t, sc.URL(), id, "plain.bin", "a.jpg", "members"); code != http.StatusNotFound {
		t.Fatalf("?member= on a name that is no shard: %d, want 404", code)
	}
	// HEAD of a member: its size, no bill. A range within a member: its
	// bytes, and a sample for its key.
	m2 := x50.Members[x50.Member("s000050_2.jpg")]
	req, _ := http.NewRequest(http.MethodHead, base+s50+"?member=s000050_2.jpg", nil)
	req.Header.Set("X-Provgate-Job", "head")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != m2.Size || resp.Header.Get("X-Provgate-Shard-Samples") != "3" {
		t.Fatalf("HEAD member: %d, %d bytes, samples %q", resp.StatusCode, resp.ContentLength, resp.Header.Get("X-Provgate-Shard-Samples"))
	}
	if code, b := rangeGet(t, base+s50+"?member=s000050_2.jpg", "bytes=2-", "range"); code != http.StatusPartialContent ||
		!bytes.Equal(b, tars[s50][m2.Offset+2:m2.Offset+m2.Size]) {
		t.Fatalf("range of a member: %d, %d bytes", code, len(b))
	}

	// Refused: the tampered shard and the lying index, whole and by member.
	for _, name := range []string{"shard-000099.tar", "liar.tar"} {
		if code, b := get(t, http.DefaultClient, sc.URL(), id, name, 1, "refused"); code != http.StatusBadGateway {
			t.Fatalf("GET %s: %d (%s), want 502", name, code, errorCode(b))
		}
		x := shardIndex(t, tars["shard-000099.tar"])
		if name == "liar.tar" {
			x = shardIndex(t, lie)
		}
		for _, m := range x.Members[:2] {
			if code, b, _ := getMember(t, sc.URL(), id, name, m.Name, "refused"); code != http.StatusBadGateway {
				t.Fatalf("GET %s?member=%s: %d (%s), want 502", name, m.Name, code, errorCode(b))
			}
		}
	}

	// Billing, at the registry after sync: 50 shards of 3 attested samples;
	// 3 samples for the member reads; nothing for the refused reads.
	if tot := totals(t, e, sc, "wds", 50); tot.Units != 50*perShard || tot.AccessBytes != sumSizes(tars, 0, 50) {
		t.Errorf("whole shards: %d samples, %d bytes; want %d samples, %d bytes", tot.Units, tot.AccessBytes, 50*perShard, sumSizes(tars, 0, 50))
	}
	if tot := totals(t, e, sc, "members", 4); tot.Units != 3 {
		t.Errorf("member reads: %d samples, want 3", tot.Units)
	}
	if tot := totals(t, e, sc, "range", 1); tot.Units != 1 || tot.AccessBytes != m2.Size-2 {
		t.Errorf("range of a member: %d samples, %d bytes; want 1, %d", tot.Units, tot.AccessBytes, m2.Size-2)
	}
	for _, job := range []string{"refused", "head"} {
		tot, err := e.client.MeteringTotals(context.Background(), id, job, -1)
		if err != nil {
			t.Fatal(err)
		}
		if tot.Units != 0 || tot.BilledBytes != 0 || tot.AccessBytes != 0 {
			t.Errorf("job %s billed %d samples, %d bytes; want nothing", job, tot.Units, tot.BilledBytes)
		}
	}
}

func sumSizes(tars map[string][]byte, from, to int) int64 {
	var n int64
	for i := from; i < to; i++ {
		n += int64(len(tars[fmt.Sprintf("shard-%06d.tar", i)]))
	}
	return n
}

// TestShardAbortBillsTheMembersSent: a whole read of a large shard cut
// short bills the samples of the members whose data was fully or partly
// sent (and the bytes sent), not the shard's attested count.
func TestShardAbortBillsTheMembersSent(t *testing.T) {
	e := newEnv(t, envOpt{})
	b := wdsShard(t, 0, 8, 4<<20) // 8 samples of 4 MiB
	x := shardIndex(t, b)
	e.putRaw("big.tar", b)
	obj := registrytest.Object("big.tar", b)
	obj.Shard = x
	e.alice.AttestBatch(t, e.c.ContractID, []contract.ObjectClaim{obj})
	sc := e.sidecar(nil)
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "big.tar", 0, "warm"); code != http.StatusOK {
		t.Fatalf("warm: %d", code)
	}
	hc := &http.Client{Transport: &http.Transport{}}
	req, _ := http.NewRequest(http.MethodGet, sc.URL()+"/v1/contracts/"+e.c.ContractID+"/objects/big.tar", nil)
	req.Header.Set("X-Provgate-Job", "abort")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 6<<20)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	var tot *contractTotals
	waitFor(t, "the aborted read at the registry", 30*time.Second, func() bool {
		sc.SyncNow(context.Background())
		tt, err := e.client.MeteringTotals(context.Background(), e.c.ContractID, "abort", -1)
		if err != nil {
			t.Fatal(err)
		}
		tot = tt
		return tt.AccessEvents >= 1 && sc.Ledger().OutboxDepth(e.c.ContractID) == 0
	})
	sent := tot.AccessBytes
	if sent >= int64(len(b)) || sent < 6<<20 {
		t.Fatalf("aborted read billed %d bytes; want at least the %d read and less than the %d-byte shard", sent, 6<<20, len(b))
	}
	keys := map[string]bool{}
	for _, m := range x.Members {
		if m.Offset < sent {
			k, _, _ := contract.SampleKey(m.Name)
			keys[k] = true
		}
	}
	if tot.Units != int64(len(keys)) || tot.Units >= x.Samples {
		t.Errorf("aborted read after %d bytes billed %d samples; want %d (the keys of the members it sent), fewer than the %d attested",
			sent, tot.Units, len(keys), x.Samples)
	}
}

type contractTotals = contract.MeteringTotals

// TestShardTokens: under per-token pricing a shard's members carry their
// token counts (contribute counts them), the sidecar counts them again
// against the index before serving, a whole read bills their sum and a
// member read its own; an index that moves tokens from one member to
// another (same sum) is refused (502).
func TestShardTokens(t *testing.T) {
	e := newEnv(t, envOpt{contract: func(c *contract.Contract) {
		c.Pricing = contract.Pricing{Unit: contract.UnitToken, PriceUSD: 1e-6, Tokenizer: "whitespace-v1"}
	}})
	text := func(members ...string) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for i := 0; i+1 < len(members); i += 2 {
			tw.WriteHeader(&tar.Header{Name: members[i], Mode: 0o644, Size: int64(len(members[i+1])), Typeflag: tar.TypeReg})
			tw.Write([]byte(members[i+1]))
		}
		tw.Close()
		return buf.Bytes()
	}
	dir := t.TempDir()
	good := text("k1.txt", "one two three", "k1.json", `{"a": 1}`, "k2.txt", "four five")
	os.WriteFile(filepath.Join(dir, "t.tar"), good, 0o644)
	contributeDir(t, e, dir)
	moved := text("k1.txt", "a b c", "k2.txt", "d")
	e.putRaw("moved.tar", moved)
	obj := registrytest.Object("moved.tar", moved)
	obj.Shard = shardIndex(t, moved)
	obj.Shard.Members[0].Tokens, obj.Shard.Members[1].Tokens, obj.Tokens = 1, 3, 4
	e.alice.AttestBatch(t, e.c.ContractID, []contract.ObjectClaim{obj})

	sc := e.sidecar(nil)
	id := e.c.ContractID
	if code, b := get(t, http.DefaultClient, sc.URL(), id, "t.tar", 0, "tok"); code != http.StatusOK || !bytes.Equal(b, good) {
		t.Fatalf("whole shard: %d", code)
	}
	if code, b, _ := getMember(t, sc.URL(), id, "t.tar", "k2.txt", "tok-member"); code != http.StatusOK || string(b) != "four five" {
		t.Fatalf("member: %d %q", code, b)
	}
	if code, b := get(t, http.DefaultClient, sc.URL(), id, "moved.tar", 0, "tok"); code != http.StatusBadGateway {
		t.Fatalf("tokens moved between members: %d (%s), want 502", code, errorCode(b))
	}
	if tot := totals(t, e, sc, "tok", 1); tot.Units != 3+2+2 {
		t.Errorf("whole shard billed %d tokens, want 7", tot.Units)
	}
	if tot := totals(t, e, sc, "tok-member", 1); tot.Units != 2 {
		t.Errorf("member read billed %d tokens, want 2", tot.Units)
	}
}
