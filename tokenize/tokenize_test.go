package tokenize_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/provgate/provgate/tokenize"
)

func TestWhitespaceCounts(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
	}{
		{"empty", "", 0},
		{"only spaces", " \t\n\r\v\f ", 0},
		{"one word", "hello", 1},
		{"leading and trailing space", "  hello world  ", 2},
		{"runs of mixed space", "a\t\tb\n\nc \r\n d", 4},
		{"no-break space U+00A0 separates", "a\u00a0b", 2},
		{"next line U+0085 separates", "a\u0085b", 2},
		{"ideographic space U+3000 separates", "日本\u3000語", 2},
		{"zero-width space U+200B does not", "a\u200bb", 1},
		{"multibyte words", "héllo wörld ✓ 🙂", 4},
		{"punctuation is part of a word", "don't stop, ok?", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tokenize.Count(tokenize.Whitespace, strings.NewReader(tc.in))
			if err != nil || got != tc.want {
				t.Errorf("Count(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestWhitespaceRefusesInvalidUTF8(t *testing.T) {
	for _, in := range []string{"\xff", "abc \xc3", "\xe2\x82", "ok \xed\xa0\x80 surrogate", "\xc0\xaf overlong"} {
		if n, err := tokenize.Count(tokenize.Whitespace, strings.NewReader(in)); !errors.Is(err, tokenize.ErrInvalidUTF8) {
			t.Errorf("Count(%q) = %d, %v; want ErrInvalidUTF8", in, n, err)
		}
	}
}

// TestWhitespaceAnyChunking: a rune split across writes counts once, so
// the count does not depend on how the bytes arrive.
func TestWhitespaceAnyChunking(t *testing.T) {
	in := []byte("α βγ 🙂🙂 δ\u3000ε  z")
	want := int64(len(strings.Fields(string(in))))
	for size := 1; size <= len(in); size++ {
		c, _ := tokenize.New(tokenize.Whitespace)
		for b := in; len(b) > 0; {
			n := min(size, len(b))
			if _, err := c.Write(b[:n]); err != nil {
				t.Fatalf("chunk %d: %v", size, err)
			}
			b = b[n:]
		}
		if got, err := c.Count(); err != nil || got != want {
			t.Errorf("chunks of %d: %d, %v; want %d", size, got, err, want)
		}
	}
}

func TestUnknownTokenizer(t *testing.T) {
	if tokenize.Known("bpe-secret") {
		t.Fatal("an unimplemented tokenizer is known")
	}
	if _, err := tokenize.New("bpe-secret"); !errors.Is(err, tokenize.ErrUnknown) {
		t.Errorf("New(unknown) = %v, want ErrUnknown", err)
	}
	if !tokenize.Known(tokenize.Whitespace) {
		t.Error("whitespace-v1 is not known")
	}
}

// FuzzWhitespace checks the streaming counter, split anywhere, against
// the definition: strings.Fields (runs of non-unicode.IsSpace) over valid
// UTF-8, an error otherwise.
func FuzzWhitespace(f *testing.F) {
	f.Add([]byte("hello  world"), uint(3))
	f.Add([]byte("🙂 x"), uint(2))
	f.Add([]byte("\xf0\x9f"), uint(1))
	f.Fuzz(func(t *testing.T, b []byte, split uint) {
		c, _ := tokenize.New(tokenize.Whitespace)
		cut := int(split % uint(len(b)+1))
		_, err1 := c.Write(b[:cut])
		_, err2 := c.Write(b[cut:])
		got, err := c.Count()
		if !utf8.Valid(b) {
			if err == nil || !errors.Is(err, tokenize.ErrInvalidUTF8) {
				t.Fatalf("%q split at %d: count %d, no error", b, cut, got)
			}
			return
		}
		if err1 != nil || err2 != nil || err != nil {
			t.Fatalf("%q split at %d: %v %v %v", b, cut, err1, err2, err)
		}
		if want := int64(len(strings.Fields(string(b)))); got != want {
			t.Fatalf("%q split at %d: %d, want %d", b, cut, got, want)
		}
		again, _ := tokenize.Count(tokenize.Whitespace, bytes.NewReader(b))
		if again != got {
			t.Fatalf("%q: %d in one piece, %d in two", b, again, got)
		}
	})
}
