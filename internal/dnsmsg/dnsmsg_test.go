package dnsmsg

import (
	"bytes"
	"errors"
	"testing"
)

// query is a real query for example.com A with EDNS, as dig sends it.
var query = []byte{
	0xbe, 0xef, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
	7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0x00, 0x01, 0x00, 0x01,
	0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
}

func TestParse(t *testing.T) {
	h, err := ParseHeader(query)
	if err != nil || h.ID != 0xbeef || h.Response || h.Opcode != 0 || h.Truncated || h.QDCount != 1 {
		t.Fatalf("header %+v %v", h, err)
	}
	q, err := Question(query)
	if err != nil || !bytes.Equal(q, query[12:29]) {
		t.Fatalf("question %x %v", q, err)
	}
	reply := append([]byte(nil), query...)
	reply[2] |= 0x82 // QR, TC
	if h, _ := ParseHeader(reply); !h.Response || !h.Truncated {
		t.Errorf("reply header %+v", h)
	}
	SetID(reply, 0x0102)
	if h, _ := ParseHeader(reply); h.ID != 0x0102 {
		t.Errorf("id %#x after SetID", h.ID)
	}
}

func TestMalformed(t *testing.T) {
	noQuestion := append([]byte(nil), query[:12]...)
	noQuestion[5] = 0
	pointer := append(append([]byte(nil), query[:12]...), 0xc0, 0x0c, 0, 1, 0, 1)
	long := append([]byte(nil), query[:12]...)
	for range 5 {
		long = append(long, 63)
		long = append(long, bytes.Repeat([]byte{'a'}, 63)...)
	}
	long = append(long, 0, 0, 1, 0, 1)
	for name, tc := range map[string]struct {
		p    []byte
		want error
	}{
		"empty":         {nil, ErrShort},
		"short":         {query[:11], ErrShort},
		"no question":   {noQuestion, ErrQuestion},
		"cut name":      {query[:20], ErrQuestion},
		"cut type":      {query[:27], ErrQuestion},
		"pointer":       {pointer, ErrQuestion},
		"name too long": {long, ErrQuestion},
	} {
		if _, err := Question(tc.p); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

func TestNoAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() {
		_, _ = ParseHeader(query)
		_, _ = Question(query)
	}); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// FuzzQuestion: any input is answered without a panic, and a question
// found lies inside the message right after the header.
func FuzzQuestion(f *testing.F) {
	f.Add(query)
	f.Add(query[:12])
	f.Fuzz(func(t *testing.T, p []byte) {
		_, herr := ParseHeader(p)
		q, err := Question(p)
		if err != nil {
			return
		}
		if herr != nil || len(q) < 5 || !bytes.Equal(q, p[12:12+len(q)]) {
			t.Fatalf("question %x of %x", q, p)
		}
	})
}
