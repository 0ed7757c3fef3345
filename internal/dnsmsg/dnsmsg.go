// Package dnsmsg reads the little of a DNS message (RFC 1035 §4.1) that
// DNS-aware UDP balancing needs — the header and the first question — in
// place and without allocating, and rewrites a message's id. Answers are
// passed on as they came; nothing else of a message is parsed.
package dnsmsg

import "errors"

// HeaderLen is the size of the DNS header.
const HeaderLen = 12

var (
	// ErrShort: shorter than a DNS header.
	ErrShort = errors.New("dns: message shorter than its header")
	// ErrQuestion: the question section is missing or malformed.
	ErrQuestion = errors.New("dns: malformed question")
)

// Header is a message's header.
type Header struct {
	ID        uint16
	Response  bool  // QR
	Opcode    uint8 // 0: QUERY
	Truncated bool  // TC: the answer did not fit; the client retries over TCP
	RCode     uint8
	QDCount   uint16
}

// ParseHeader reads the header of p.
func ParseHeader(p []byte) (Header, error) {
	if len(p) < HeaderLen {
		return Header{}, ErrShort
	}
	return Header{
		ID:        uint16(p[0])<<8 | uint16(p[1]),
		Response:  p[2]&0x80 != 0,
		Opcode:    p[2] >> 3 & 0x0f,
		Truncated: p[2]&0x02 != 0,
		RCode:     p[3] & 0x0f,
		QDCount:   uint16(p[4])<<8 | uint16(p[5]),
	}, nil
}

// Question returns the wire form of p's first question: its name (as
// labels, no compression: a question's name comes first, before any name
// it could point to), type and class. It aliases p.
func Question(p []byte) ([]byte, error) {
	if len(p) < HeaderLen {
		return nil, ErrShort
	}
	if p[4] == 0 && p[5] == 0 {
		return nil, ErrQuestion
	}
	i, total := HeaderLen, 0
	for {
		if i >= len(p) {
			return nil, ErrQuestion
		}
		l := int(p[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 { // a compression pointer or a reserved label type
			return nil, ErrQuestion
		}
		if total += l + 1; total > 254 {
			return nil, ErrQuestion
		}
		i += 1 + l
	}
	if i+4 > len(p) {
		return nil, ErrQuestion
	}
	return p[HeaderLen : i+4], nil
}

// SetID rewrites the id of message p (at least HeaderLen bytes long).
func SetID(p []byte, id uint16) {
	p[0], p[1] = byte(id>>8), byte(id)
}
