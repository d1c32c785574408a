package proxy

import (
	"context"
	"net/http"
	"time"
)

// read is one response's bill in the making: its place in a pass over the
// object (which says whether it bills the sample) and the quota it
// reserved when it was checked. Every path that sends object bytes opens
// one with beginRead and ends it with commit (all its bytes are about to
// be complete at the client) or abort (it sent fewer); end, deferred,
// releases whatever is left of a read that never got that far.
type read struct {
	s       *Server
	a       Access
	tokens  int64
	length  int64
	claim   *passClaim
	shard   *shardRead // a shard's read bills by key instead (shard.go)
	res     Reservation
	settled bool
	// submitted: the ledger took the access in place of the reservation,
	// which needs no release (a release would only take the ledger's lock).
	submitted bool
}

// beginRead claims [start, start+length) of e in its (job, epoch) pass
// and reserves the quota the read may bill: a sample if it opens the pass,
// and its bytes. A spent quota undoes the claim and refuses.
func (s *Server) beginRead(src Source, e *ManifestEntry, g Grant, epoch int64, job string, start, length int64) (*read, error) {
	k := passKey{contract: src.ID(), job: job, name: e.Name, sha: e.DecodedSHA256, epoch: epoch}
	c := s.passes.claim(k, e.DecodedSize, start, length)
	var samples int64
	if c.Opens {
		samples = 1
	}
	res, err := s.cfg.Meter.Reserve(src.ID(), g, src.Contract().Usage, samples, length)
	if err != nil {
		c.settle(0)
		return nil, err
	}
	return &read{
		s: s, tokens: e.Tokens, length: length, claim: c, res: res,
		a: Access{Contract: src.ID(), Name: e.Name, DecodedSHA: e.DecodedSHA256, Epoch: epoch, Job: job,
			TokenID: g.TokenID, Lease: g.LeaseID},
	}, nil
}

// bill fills the access with what sent bytes of the read bill.
func (rd *read) bill(sent int64, outcome string) Access {
	rd.settled = true
	a := rd.a
	a.Bytes, a.Outcome = sent, outcome
	if rd.shard != nil {
		a.Samples, a.Tokens = rd.shard.settle(sent)
		if a.Samples == 0 && outcome != OutcomeAborted {
			a.Outcome = OutcomeRange // bytes only
		}
		return a
	}
	if rd.claim.settle(sent) {
		a.Samples, a.Tokens = 1, rd.tokens
	}
	return a
}

// commit records the read as complete (all length bytes) with outcome and
// waits until it is durable; the caller then sends its last byte. On an
// error the caller must abort the response.
func (rd *read) commit(ctx context.Context, outcome string) error {
	wait, err := rd.submit(ctx, rd.bill(rd.length, outcome), true)
	if err != nil {
		return err
	}
	return rd.s.wait(ctx, wait)
}

// submitOnly queues the read as complete without waiting; batch frames
// wait for all their accesses before the batch's last byte.
func (rd *read) submitOnly(ctx context.Context, outcome string) (func(context.Context) error, error) {
	return rd.submit(ctx, rd.bill(rd.length, outcome), true)
}

// abort records a read that sent only sent bytes (the client went away,
// or the file failed): it bills those bytes, and the sample if it opened
// the pass; a read that sent nothing that anyone relies on bills nothing.
// Then the response is aborted.
func (rd *read) abort(ctx context.Context, sent int64) {
	a := rd.bill(sent, OutcomeAborted)
	if a.Bytes > 0 || a.Samples > 0 {
		wait, err := rd.submit(ctx, a, false)
		if err == nil {
			err = rd.s.wait(ctx, wait)
		}
		if err != nil {
			rd.s.log.Warn("recording an aborted access failed", "contract", a.Contract, "name", a.Name, "err", err)
		}
	}
	rd.end()
	panic(http.ErrAbortHandler)
}

// end releases the reservation; a read that never sent settles as unsent.
func (rd *read) end() {
	if !rd.settled {
		rd.settled = true
		if rd.claim != nil {
			rd.claim.settle(0)
		}
	}
	if !rd.submitted {
		rd.res.Release()
	}
}

// maxCommitWait bounds how long a read whose last byte is still unsent
// waits for room in a full ledger: past it the response is aborted, unsent
// and unbilled, rather than held (with its file and its reservation) for
// as long as the ledger stalls.
const maxCommitWait = 5 * time.Second

// submit queues a under the read's reservation, which it replaces (the
// ledger counts a from its submission on), whatever the request's context
// does. bounded: the read can still be aborted unbilled (its last byte is
// unsent), so it waits at most maxCommitWait for room; otherwise the bytes
// are already out and their access waits as long as it takes.
func (rd *read) submit(ctx context.Context, a Access, bounded bool) (func(context.Context) error, error) {
	ctx = context.WithoutCancel(ctx)
	if bounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, maxCommitWait)
		defer cancel()
	}
	wait, err := rd.s.submit(ctx, rd.res, a)
	rd.submitted = err == nil
	return wait, err
}
