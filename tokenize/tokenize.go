// Package tokenize holds the deterministic tokenizers that a contract's
// "token" pricing unit can name (contract.Pricing.Tokenizer). A contributor
// attests each object's token count under the contract's tokenizer; the
// sidecar counts the decoded bytes again as it verifies them, and a pass
// over the object bills that count.
//
// A tokenizer here is a pure function of the decoded bytes, fixed forever
// under its name: a change of behaviour is a new name ("whitespace-v2"),
// never a new version of the same one, since contracts and attestations
// name it.
package tokenize

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"unicode"
	"unicode/utf8"
)

// Whitespace is "whitespace-v1": the number of maximal runs of
// non-whitespace characters (unicode.IsSpace) in the object decoded as
// UTF-8. Invalid UTF-8 is an error: such an object has no count.
const Whitespace = "whitespace-v1"

// ErrInvalidUTF8: the bytes are not valid UTF-8.
var ErrInvalidUTF8 = errors.New("tokenize: invalid UTF-8")

// ErrUnknown: no tokenizer has that name.
var ErrUnknown = errors.New("tokenize: unknown tokenizer")

// Counter counts tokens in bytes written to it, in any chunking.
type Counter interface {
	io.Writer
	// Count returns the count of everything written, or the error that
	// makes the bytes uncountable (a truncated final rune included).
	Count() (int64, error)
}

var tokenizers = map[string]func() Counter{
	Whitespace: func() Counter { return &whitespace{} },
}

// Known reports whether name is a tokenizer this build implements.
func Known(name string) bool {
	_, ok := tokenizers[name]
	return ok
}

// Names lists the known tokenizers.
func Names() []string {
	out := make([]string, 0, len(tokenizers))
	for n := range tokenizers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// New returns a Counter for the named tokenizer.
func New(name string) (Counter, error) {
	f, ok := tokenizers[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %v)", ErrUnknown, name, Names())
	}
	return f(), nil
}

// Count counts the tokens of everything r yields.
func Count(name string, r io.Reader) (int64, error) {
	c, err := New(name)
	if err != nil {
		return 0, err
	}
	if _, err := io.Copy(c, r); err != nil {
		return 0, err
	}
	return c.Count()
}

// whitespace is the streaming "whitespace-v1" counter.
type whitespace struct {
	n       int64
	inToken bool
	pending [utf8.UTFMax]byte // the start of a rune split across writes
	np      int
	err     error
}

func (w *whitespace) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	total := len(p)
	if w.np > 0 {
		// Complete the rune a previous write began.
		need := min(utf8.UTFMax-w.np, len(p))
		var buf [2 * utf8.UTFMax]byte
		k := copy(buf[:], w.pending[:w.np])
		k += copy(buf[k:], p[:need])
		if !utf8.FullRune(buf[:k]) {
			w.np = copy(w.pending[:], buf[:k])
			return total, nil
		}
		r, size := utf8.DecodeRune(buf[:k])
		if r == utf8.RuneError && size <= 1 {
			w.err = ErrInvalidUTF8
			return 0, w.err
		}
		w.rune(r)
		p = p[size-w.np:]
		w.np = 0
	}
	for i := 0; i < len(p); {
		if b := p[i]; b < utf8.RuneSelf {
			w.rune(rune(b))
			i++
			continue
		}
		if !utf8.FullRune(p[i:]) {
			w.np = copy(w.pending[:], p[i:])
			return total, nil
		}
		r, size := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && size <= 1 {
			w.err = ErrInvalidUTF8
			return 0, w.err
		}
		w.rune(r)
		i += size
	}
	return total, nil
}

func (w *whitespace) rune(r rune) {
	space := r == ' ' || (r < utf8.RuneSelf && '\t' <= r && r <= '\r') || (r >= utf8.RuneSelf && unicode.IsSpace(r))
	if !space && !w.inToken {
		w.n++
	}
	w.inToken = !space
}

func (w *whitespace) Count() (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.np > 0 {
		return 0, fmt.Errorf("%w: the bytes end inside a character", ErrInvalidUTF8)
	}
	return w.n, nil
}
