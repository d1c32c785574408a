package proxy

import (
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
)

// testShard: keys a (a.jpg 100 B at 512, a.cls 10 B at 1536) and b
// (b.jpg 100 B at 2560, b.cls empty at 3584), as a tar lays them out.
func testShard() *contract.ShardIndex {
	h := strings.Repeat("ab", 32)
	return &contract.ShardIndex{Samples: 2, Members: []contract.ShardMember{
		{Name: "a.jpg", Offset: 512, Size: 100, SHA256: h, Tokens: 5},
		{Name: "a.cls", Offset: 1536, Size: 10, SHA256: h, Tokens: 1},
		{Name: "b.jpg", Offset: 2560, Size: 100, SHA256: h, Tokens: 7},
		{Name: "b.cls", Offset: 3584, Size: 0, SHA256: h},
	}}
}

// TestShardBilling: the shard billing rule, read by read.
func TestShardBilling(t *testing.T) {
	x := testShard()
	const size = 4608
	if err := x.Check(size, 13); err != nil {
		t.Fatal(err)
	}
	member := func(i int) [3]int64 { return [3]int64{x.Members[i].Offset, x.Members[i].Size, -1} }
	whole := [3]int64{0, size, -1}
	type want struct{ samples, tokens int64 }
	tests := []struct {
		name  string
		reads [][3]int64 // start, length, sent (-1: all)
		want  []want
	}{
		{"a whole read bills the attested samples", [][3]int64{whole, whole}, []want{{2, 13}, {2, 13}}},
		{"two members of one key bill one sample", [][3]int64{member(0), member(1), member(2)}, []want{{1, 5}, {0, 1}, {1, 7}}},
		{"a member again opens a new pass", [][3]int64{member(0), member(0)}, []want{{1, 5}, {1, 5}}},
		{"a whole read after a member is a new pass", [][3]int64{member(2), whole}, []want{{1, 7}, {2, 13}}},
		{"headers only bill no sample", [][3]int64{{0, 512, -1}, {612, 400, -1}}, []want{{0, 0}, {0, 0}}},
		{"an abort inside the first member bills its key", [][3]int64{{0, size, 513}}, []want{{1, 5}}},
		{"an abort before any member data bills no sample", [][3]int64{{0, size, 512}}, []want{{0, 0}}},
		{"an abort after a's members bills a; b's reads continue the pass", [][3]int64{{0, size, 1600}, member(2)}, []want{{1, 6}, {1, 7}}},
		{"an empty member counts once its header is sent; a pass that delivered every member is closed", [][3]int64{{0, size, 3584}, member(2)}, []want{{2, 13}, {1, 7}}},
		{"a range over a's members and into b's", [][3]int64{{1500, 1100, -1}, member(0)}, []want{{2, 8}, {0, 5}}},
		{"an aborted read that sent nothing bills nothing", [][3]int64{{0, size, 0}}, []want{{0, 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newShardState()
			k := passKey{contract: "c", job: "j", name: "s.tar", sha: "x", epoch: 1}
			for i, r := range tc.reads {
				sr := &shardRead{st: st, key: k, x: x, keyOf: x.KeyIndex(), start: r[0]}
				if up := sr.upper(r[1]); up < tc.want[i].samples {
					t.Fatalf("read %d: reserves %d samples, bills %d", i, up, tc.want[i].samples)
				}
				sent := r[2]
				if sent < 0 {
					sent = r[1]
				}
				if s, tok := sr.settle(sent); s != tc.want[i].samples || tok != tc.want[i].tokens {
					t.Fatalf("read %d %v: bills %d samples, %d tokens; want %d, %d", i, r, s, tok, tc.want[i].samples, tc.want[i].tokens)
				}
			}
		})
	}
}
