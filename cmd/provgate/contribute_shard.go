package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/tokenize"
)

// Shards: with --shards (the default), a file whose name ends in .tar is
// contributed as a WebDataset shard: its member index (each member's name,
// data offset, size and sha256, and tokens under a per-token pricing; the
// number of distinct keys as its sample count) goes into its object claim,
// after archive/tar has read it as a well-formed shard (regular files only,
// each named <key>.<ext> and listed once, at most contract.MaxShardMembers).
// A shard's claim is always appended in a batch attestation, whose
// manifest has room for its index.

const shardMediaType = "application/x-tar"

func isShardFile(name string) bool { return strings.HasSuffix(name, contract.ShardExt) }

// shardIndexFile builds the member index of the tar at path, counting each
// member's tokens under tokenizer when one is named.
func shardIndexFile(path, tokenizer string) (*contract.ShardIndex, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var newCounter func() (contract.TokenCounter, error)
	if tokenizer != "" {
		newCounter = func() (contract.TokenCounter, error) { return tokenize.New(tokenizer) }
	}
	x, err := contract.BuildShardIndex(f, newCounter)
	if err != nil {
		return nil, fmt.Errorf("shard %s: %w", path, err)
	}
	return x, nil
}

// anyShard reports whether items hold a shard.
func anyShard(items []contributeItem) bool {
	for _, it := range items {
		if isShardFile(it.name) {
			return true
		}
	}
	return false
}
