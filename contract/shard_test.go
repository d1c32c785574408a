package contract_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
)

// shardTar builds a tar of the given members (name, body pairs).
func shardTar(tb testing.TB, members ...string) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i+1 < len(members); i += 2 {
		body := members[i+1]
		if err := tw.WriteHeader(&tar.Header{Name: members[i], Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func mustIndex(tb testing.TB, b []byte) *contract.ShardIndex {
	tb.Helper()
	x, err := contract.BuildShardIndex(bytes.NewReader(b), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return x
}

func TestBuildShardIndex(t *testing.T) {
	b := shardTar(t, "k1.jpg", "jpeg-one", "k1.cls", "7", "d/k2.jpg", strings.Repeat("x", 700), "d/k2.cls", "3")
	x := mustIndex(t, b)
	if x.Samples != 2 || len(x.Members) != 4 {
		t.Fatalf("samples %d members %d, want 2 and 4", x.Samples, len(x.Members))
	}
	for _, m := range x.Members {
		got := b[m.Offset : m.Offset+m.Size]
		if contract.ManifestDigest(got) != m.SHA256 {
			t.Errorf("member %s: bytes at offset %d do not hash to its sha256", m.Name, m.Offset)
		}
	}
	if err := x.Check(int64(len(b)), 0); err != nil {
		t.Fatalf("a built index fails its check: %v", err)
	}
	if got := x.KeyIndex(); fmt.Sprint(got) != "[0 0 1 1]" {
		t.Errorf("key index %v, want [0 0 1 1]", got)
	}
}

func TestBuildShardIndexRefusesMalformedTars(t *testing.T) {
	dup := shardTar(t, "k1.jpg", "a", "k1.jpg", "b")
	noExt := shardTar(t, "README", "a")
	var dir bytes.Buffer
	tw := tar.NewWriter(&dir)
	tw.WriteHeader(&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.Close()
	var link bytes.Buffer
	tw = tar.NewWriter(&link)
	tw.WriteHeader(&tar.Header{Name: "k.jpg", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"})
	tw.Close()
	var many bytes.Buffer
	tw = tar.NewWriter(&many)
	for i := range contract.MaxShardMembers + 1 {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("k%d.x", i), Typeflag: tar.TypeReg, Mode: 0o644})
	}
	tw.Close()
	good := shardTar(t, "k1.jpg", strings.Repeat("a", 600))
	for name, b := range map[string][]byte{
		"duplicate member": dup, "no extension": noExt, "directory": dir.Bytes(), "symlink": link.Bytes(),
		"too many members": many.Bytes(), "empty": shardTar(t), "truncated": good[:700], "garbage": []byte(strings.Repeat("z", 2048)),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := contract.BuildShardIndex(bytes.NewReader(b), nil); !errors.Is(err, contract.ErrShardTar) {
				t.Fatalf("err = %v, want ErrShardTar", err)
			}
		})
	}
}

// TestShardIndexAttacks: an index that does not describe a tar the way
// archive/tar reads one is refused by Check, which the registry runs at
// append (ObjectClaim.Validate) and every verifier on replay.
func TestShardIndexAttacks(t *testing.T) {
	b := shardTar(t, "k1.jpg", "jpeg-one", "k1.cls", "7", "k2.jpg", strings.Repeat("x", 700), "k2.cls", "3")
	size := int64(len(b))
	for _, tc := range []struct {
		name string
		edit func(x *contract.ShardIndex)
	}{
		{"overlapping offsets", func(x *contract.ShardIndex) { x.Members[1].Offset = x.Members[0].Offset }},
		{"data over the next header", func(x *contract.ShardIndex) { x.Members[0].Size = 600 }},
		{"offset outside the tar", func(x *contract.ShardIndex) { x.Members[3].Offset = size + 512 }},
		{"size past the end", func(x *contract.ShardIndex) { x.Members[3].Size = size }},
		{"negative offset", func(x *contract.ShardIndex) { x.Members[0].Offset = -512 }},
		{"offset in a header", func(x *contract.ShardIndex) { x.Members[0].Offset = 0 }},
		{"unaligned offset", func(x *contract.ShardIndex) { x.Members[2].Offset++ }},
		{"member claimed twice", func(x *contract.ShardIndex) { x.Members[3].Name = x.Members[2].Name }},
		{"more samples than keys", func(x *contract.ShardIndex) { x.Samples = 3 }},
		{"fewer samples than keys", func(x *contract.ShardIndex) { x.Samples = 1 }},
		{"bad sha256", func(x *contract.ShardIndex) { x.Members[0].SHA256 = "zz" }},
		{"traversal name", func(x *contract.ShardIndex) { x.Members[0].Name = "../k1.jpg" }},
		{"no members", func(x *contract.ShardIndex) { x.Members = nil; x.Samples = 0 }},
		{"tokens not the claim's", func(x *contract.ShardIndex) { x.Members[0].Tokens = 5 }},
		{"on a name without .tar", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := mustIndex(t, b)
			name := "s.tar"
			if tc.edit == nil {
				name = "s.bin"
			} else {
				tc.edit(x)
				if err := x.Check(size, 0); !errors.Is(err, contract.ErrShardIndex) {
					t.Fatalf("Check = %v, want ErrShardIndex", err)
				}
			}
			h := strings.Repeat("ab", 32)
			o := contract.ObjectClaim{Name: name, StoredSHA256: h, StoredSize: size, Encoding: contract.EncodingIdentity,
				DecodedSHA256: h, DecodedSize: size, Shard: x}
			if err := o.Validate(); !errors.Is(err, contract.ErrShardIndex) {
				t.Fatalf("ObjectClaim.Validate = %v, want ErrShardIndex", err)
			}
		})
	}
}

// FuzzShardIndex: Check never panics, and an index it accepts has its
// members inside the tar, in order, not overlapping, and as many samples
// as distinct keys.
func FuzzShardIndex(f *testing.F) {
	b := shardTar(f, "k1.jpg", "jpeg-one", "k1.cls", "7", "k2.jpg", strings.Repeat("x", 700))
	j, _ := json.Marshal(mustIndex(f, b))
	f.Add(j, int64(len(b)))
	f.Add(bytes.Replace(j, []byte(`"k1.cls"`), []byte(`"k1.jpg"`), 1), int64(len(b)))
	f.Add([]byte(`{"samples":1,"members":[{"name":"a.b","offset":512,"size":9223372036854775807,"sha256":""}]}`), int64(1024))
	f.Fuzz(func(t *testing.T, j []byte, size int64) {
		var x contract.ShardIndex
		if json.Unmarshal(j, &x) != nil || x.Check(size, x.Tokens()) != nil {
			return
		}
		keys := map[string]bool{}
		end := int64(0)
		for _, m := range x.Members {
			if m.Offset < end+contract.TarBlockSize || m.Offset+m.Size > size || m.Size < 0 {
				t.Fatalf("accepted member %+v overlaps (end %d) or lies outside %d bytes", m, end, size)
			}
			end = m.Offset + m.Size
			k, _, _ := contract.SampleKey(m.Name)
			keys[k] = true
		}
		if int64(len(keys)) != x.Samples {
			t.Fatalf("accepted %d samples for %d keys", x.Samples, len(keys))
		}
	})
}

// FuzzBuildShardIndex: BuildShardIndex never panics, and an index it
// builds passes Check against the tar's size and points at the members'
// bytes.
func FuzzBuildShardIndex(f *testing.F) {
	f.Add(shardTar(f, "k1.jpg", "jpeg-one", "k1.cls", "7"))
	f.Add(shardTar(f, "k1.jpg", "a", "k1.jpg", "b"))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := contract.BuildShardIndex(bytes.NewReader(b), nil)
		if err != nil {
			return
		}
		if err := x.Check(int64(len(b)), 0); err != nil {
			t.Fatalf("built index fails Check: %v", err)
		}
		for _, m := range x.Members {
			if contract.ManifestDigest(b[m.Offset:m.Offset+m.Size]) != m.SHA256 {
				t.Fatalf("member %q: bytes at its offset do not match", m.Name)
			}
		}
	})
}
