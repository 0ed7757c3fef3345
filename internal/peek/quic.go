package peek

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
)

// QUIC: the ClientHello of a QUIC connection travels in the CRYPTO frames
// of the client's Initial packets, encrypted with keys that anyone can
// derive from the packet's destination connection id (RFC 9001 §5.2), so a
// proxy can read the server name without terminating anything. QUIC
// versions 1 (RFC 9000) and 2 (RFC 9369) are understood; their Initial
// packets differ only in the version number, the packet type bits, the
// salt and the key labels.

// ErrNotQUIC means the datagram is not a QUIC Initial packet this parser
// can read: a short header, another packet type first, an unknown version,
// or a packet that does not decrypt. The caller falls back to the matchers
// that need no server name, as for a TCP client that does not speak TLS.
var ErrNotQUIC = errors.New("not a readable QUIC Initial packet")

// QUIC versions.
const (
	QUICv1 uint32 = 0x00000001
	QUICv2 uint32 = 0x6b3343cf
)

// MaxQUICInitials bounds how many client datagrams a QUICInitial takes
// before it gives up: a ClientHello, even with a post-quantum key share,
// fits in two or three 1,200-byte Initial packets.
const MaxQUICInitials = 8

// quicVersion is what differs between the QUIC versions' Initial packets.
type quicVersion struct {
	initialType byte // the long header's packet type bits of an Initial
	salt        []byte
	key, iv, hp string // HKDF labels
}

var quicVersions = map[uint32]*quicVersion{
	QUICv1: {0, []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a},
		"quic key", "quic iv", "quic hp"},
	QUICv2: {1, []byte{0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9},
		"quicv2 key", "quicv2 iv", "quicv2 hp"},
}

// LongHeader is the unprotected part of a QUIC long header packet.
type LongHeader struct {
	Version    uint32
	Type       byte // the two packet type bits (their meaning depends on the version)
	DCID, SCID []byte
}

// ParseLongHeader reads the long header at the start of a datagram. It
// reports false for a short header packet or a truncated one. DCID and
// SCID alias p.
func ParseLongHeader(p []byte) (LongHeader, bool) {
	if len(p) < 7 || p[0]&0x80 == 0 {
		return LongHeader{}, false
	}
	h := LongHeader{Version: binary.BigEndian.Uint32(p[1:5]), Type: p[0] >> 4 & 3}
	rest := p[5:]
	var ok bool
	if h.DCID, rest, ok = lenPrefixed(rest, 20); !ok {
		return LongHeader{}, false
	}
	if h.SCID, _, ok = lenPrefixed(rest, 20); !ok {
		return LongHeader{}, false
	}
	return h, true
}

// lenPrefixed splits off a connection id with its one-byte length.
func lenPrefixed(p []byte, max int) (v, rest []byte, ok bool) {
	if len(p) < 1 || int(p[0]) > max || len(p) < 1+int(p[0]) {
		return nil, nil, false
	}
	return p[1 : 1+p[0]], p[1+p[0]:], true
}

// QUICInitial gathers a client's Initial packets until their CRYPTO frames
// hold a complete ClientHello. Feed it the client's datagrams in the order
// they came with Add. The zero value is ready to use; it is not safe for
// concurrent use.
type QUICInitial struct {
	version uint32
	dcid    []byte
	aead    cipher.AEAD
	iv      []byte
	hp      cipher.Block
	largest int64 // the largest packet number decrypted; -1: none yet
	started bool  // largest is set

	stream []byte   // the CRYPTO stream as received, by offset
	have   [][2]int // received ranges of stream, sorted, merged
	seen   int      // datagrams added
	hello  *Hello   // once complete
	err    error    // once failed for good
	nonce  [12]byte // scratch
}

// Add takes one datagram from the client. It returns the Hello once the
// ClientHello is complete, ErrNeedMore while more Initial packets are
// needed, ErrNotQUIC when the datagram is not a readable Initial of the
// connection, or another error for a malformed hello or one beyond the
// size bounds. Once it returned a Hello or an error other than ErrNeedMore
// it returns the same again.
func (q *QUICInitial) Add(datagram []byte) (*Hello, error) {
	if q.hello != nil || q.err != nil {
		return q.hello, q.err
	}
	if !q.started {
		q.started, q.largest = true, -1
	}
	q.seen++
	if q.seen > MaxQUICInitials {
		return q.fail(errors.New("QUIC ClientHello not complete within the Initial packets allowed"))
	}
	got := false
	for p := datagram; ; {
		// Until one Initial decrypted, a datagram that does not start with
		// one says the client does not speak QUIC.
		h, ok := ParseLongHeader(p)
		if !ok {
			if !got && q.largest < 0 {
				return q.fail(ErrNotQUIC)
			}
			break // a short header packet (or padding) ends the datagram's long header packets
		}
		v := quicVersions[h.Version]
		if v == nil {
			if !got && q.largest < 0 {
				return q.fail(ErrNotQUIC)
			}
			break
		}
		n, payload, err := q.open(p, h, v)
		if err != nil {
			if !got && q.largest < 0 {
				return q.fail(ErrNotQUIC)
			}
			break
		}
		if payload != nil {
			got = true
			if err := q.frames(payload); err != nil {
				return q.fail(err)
			}
		}
		if p = p[n:]; len(p) == 0 {
			break
		}
	}
	if !got {
		return nil, ErrNeedMore // e.g. a 0-RTT packet alone: wait for the next Initial
	}
	return q.assemble()
}

func (q *QUICInitial) fail(err error) (*Hello, error) {
	q.err = err
	return nil, err
}

// open removes the header protection of the long header packet at the
// start of p and decrypts it. It returns the packet's length in p and its
// plaintext payload, nil for a packet that is not an Initial (0-RTT,
// Handshake: skipped).
func (q *QUICInitial) open(p []byte, h LongHeader, v *quicVersion) (int, []byte, error) {
	off := 7 + len(h.DCID) + len(h.SCID)
	var token, length uint64
	var n int
	isInitial := h.Type == v.initialType
	if isInitial {
		if token, n = varint(p[off:]); n == 0 || uint64(len(p)-off-n) < token {
			return 0, nil, ErrNotQUIC
		}
		off += n + int(token)
	}
	if off > len(p) {
		return 0, nil, ErrNotQUIC
	}
	if length, n = varint(p[off:]); n == 0 {
		return 0, nil, ErrNotQUIC
	}
	off += n
	if uint64(len(p)-off) < length || length < 20 {
		return 0, nil, ErrNotQUIC
	}
	end := off + int(length)
	if !isInitial {
		return end, nil, nil
	}
	if q.aead == nil {
		if err := q.keys(h, v); err != nil {
			return 0, nil, err
		}
	} else if h.Version != q.version || string(h.DCID) != string(q.dcid) {
		return end, nil, nil // another connection's packet: not ours to read
	}
	// Header protection (RFC 9001 §5.4): a mask from a sample of the
	// ciphertext 4 bytes after the packet number's start.
	var mask [16]byte
	q.hp.Encrypt(mask[:], p[off+4:off+20])
	pkt := slices.Clone(p[:end]) // decrypt a copy: the datagram is forwarded unchanged
	pkt[0] ^= mask[0] & 0x0f
	pnLen := int(pkt[0]&3) + 1
	var truncated uint64
	for i := range pnLen {
		pkt[off+i] ^= mask[1+i]
		truncated = truncated<<8 | uint64(pkt[off+i])
	}
	pn := decodePacketNumber(q.largest, truncated, pnLen*8)
	copy(q.nonce[:], q.iv)
	for i := range 8 {
		q.nonce[11-i] ^= byte(pn >> (8 * i))
	}
	payload, err := q.aead.Open(pkt[off+pnLen:off+pnLen], q.nonce[:], pkt[off+pnLen:end], pkt[:off+pnLen])
	if err != nil {
		return 0, nil, ErrNotQUIC
	}
	if int64(pn) > q.largest {
		q.largest = int64(pn)
	}
	return end, payload, nil
}

// keys derives the client's Initial keys from the first packet's
// destination connection id (RFC 9001 §5.2).
func (q *QUICInitial) keys(h LongHeader, v *quicVersion) error {
	initial, err := hkdf.Extract(sha256.New, h.DCID, v.salt)
	if err != nil {
		return err
	}
	client := expandLabel(initial, "client in", sha256.Size)
	key := expandLabel(client, v.key, 16)
	q.iv = expandLabel(client, v.iv, 12)
	hp := expandLabel(client, v.hp, 16)
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	if q.aead, err = cipher.NewGCM(block); err != nil {
		return err
	}
	if q.hp, err = aes.NewCipher(hp); err != nil {
		return err
	}
	q.version, q.dcid = h.Version, slices.Clone(h.DCID)
	return nil
}

// expandLabel is TLS 1.3's HKDF-Expand-Label with an empty context.
func expandLabel(secret []byte, label string, n int) []byte {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = append(info, byte(n>>8), byte(n), byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	out, err := hkdf.Expand(sha256.New, secret, string(info), n)
	if err != nil {
		panic(err) // n is a constant far below HKDF's limit
	}
	return out
}

// decodePacketNumber recovers a full packet number from its truncated form
// (RFC 9000 Appendix A.3).
func decodePacketNumber(largest int64, truncated uint64, bits int) uint64 {
	expected := uint64(largest + 1)
	win := uint64(1) << bits
	hwin, mask := win/2, win-1
	candidate := expected&^mask | truncated
	switch {
	case candidate+hwin <= expected && candidate < 1<<62-win:
		return candidate + win
	case candidate > expected+hwin && candidate >= win:
		return candidate - win
	}
	return candidate
}

// varint reads a QUIC variable-length integer; n is 0 when p is too short.
func varint(p []byte) (v uint64, n int) {
	if len(p) == 0 {
		return 0, 0
	}
	n = 1 << (p[0] >> 6)
	if len(p) < n {
		return 0, 0
	}
	v = uint64(p[0] & 0x3f)
	for _, b := range p[1:n] {
		v = v<<8 | uint64(b)
	}
	return v, n
}

// frames takes the CRYPTO frames of a decrypted Initial payload. Initial
// packets carry only PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE
// (RFC 9000 §12.4); anything else is a protocol violation.
func (q *QUICInitial) frames(p []byte) error {
	bad := errors.New("malformed QUIC Initial frame")
	for len(p) > 0 {
		switch t := p[0]; t {
		case 0x00, 0x01: // PADDING, PING
			p = p[1:]
		case 0x02, 0x03: // ACK: largest, delay, range count, first range, ranges (, ECN counts)
			p = p[1:]
			var fields [4]uint64
			for i := range fields {
				v, n := varint(p)
				if n == 0 {
					return bad
				}
				fields[i], p = v, p[n:]
			}
			skip := 2 * fields[2]
			if t == 0x03 {
				skip += 3
			}
			for ; skip > 0; skip-- {
				_, n := varint(p)
				if n == 0 {
					return bad
				}
				p = p[n:]
			}
		case 0x06: // CRYPTO: offset, length, data
			off, n := varint(p[1:])
			if n == 0 {
				return bad
			}
			p = p[1+n:]
			length, n := varint(p)
			if n == 0 || uint64(len(p)-n) < length {
				return bad
			}
			data := p[n : n+int(length)]
			p = p[n+int(length):]
			if off+length > MaxHelloSize {
				return errors.New("QUIC ClientHello too large")
			}
			q.addCrypto(int(off), data)
		case 0x1c: // CONNECTION_CLOSE
			return errors.New("QUIC client closed the connection in its Initial")
		default:
			return bad
		}
	}
	return nil
}

// addCrypto stores CRYPTO stream bytes at off (frames may come out of
// order, overlap or repeat).
func (q *QUICInitial) addCrypto(off int, data []byte) {
	if len(data) == 0 {
		return
	}
	end := off + len(data)
	if end > len(q.stream) {
		q.stream = append(q.stream, make([]byte, end-len(q.stream))...)
	}
	copy(q.stream[off:], data)
	q.have = append(q.have, [2]int{off, end})
	slices.SortFunc(q.have, func(a, b [2]int) int { return a[0] - b[0] })
	merged := q.have[:1]
	for _, r := range q.have[1:] {
		last := &merged[len(merged)-1]
		if r[0] <= last[1] {
			last[1] = max(last[1], r[1])
		} else {
			merged = append(merged, r)
		}
	}
	q.have = merged
}

// assemble parses the ClientHello once the stream's first bytes hold all
// of it.
func (q *QUICInitial) assemble() (*Hello, error) {
	if len(q.have) == 0 || q.have[0][0] != 0 {
		return nil, ErrNeedMore
	}
	msg := q.stream[:q.have[0][1]]
	if len(msg) < 4 {
		return nil, ErrNeedMore
	}
	if msg[0] != 1 { // client_hello
		return q.fail(errors.New("QUIC CRYPTO stream does not start with a ClientHello"))
	}
	hl := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
	if hl+4 > MaxHelloSize {
		return q.fail(errors.New("QUIC ClientHello too large"))
	}
	if len(msg) < hl+4 {
		return nil, ErrNeedMore
	}
	// crypto/tls parses the hello from TLS records: wrap the handshake
	// message in records of at most 16 KiB each.
	hs := msg[:hl+4]
	records := make([]byte, 0, len(hs)+5*(len(hs)/16384+1))
	for len(hs) > 0 {
		n := min(len(hs), 16384)
		records = append(records, 0x16, 3, 1, byte(n>>8), byte(n))
		records = append(records, hs[:n]...)
		hs = hs[n:]
	}
	h, err := parseHello(records)
	if err != nil {
		return q.fail(err)
	}
	q.hello = h
	return h, nil
}
