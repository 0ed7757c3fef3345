package peek

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// captureQUIC returns the datagrams a real quic-go client sends first, up
// to the one that completes its ClientHello, read by the parser under test
// as they come.
func captureQUIC(t testing.TB, tc *tls.Config, qc *quic.Config) ([][]byte, *Hello) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := quic.DialAddr(ctx, pc.LocalAddr().String(), tc, qc)
		if err == nil {
			conn.CloseWithError(0, "")
		}
	}()
	defer func() { cancel(); <-done }()
	var q QUICInitial
	var got [][]byte
	buf := make([]byte, 65535)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("reading the client's datagrams: %v (after %d)", err, len(got))
		}
		got = append(got, slices.Clone(buf[:n]))
		h, err := q.Add(buf[:n])
		if errors.Is(err, ErrNeedMore) {
			continue
		}
		if err != nil {
			t.Fatalf("datagram %d: %v", len(got), err)
		}
		return got, h
	}
}

// TestQUICClientHello: a real QUIC client's server name and ALPN are read
// from its Initial packets, for QUIC v1 and v2. Go's default key share
// (post-quantum X25519MLKEM768) makes the ClientHello span two Initials.
func TestQUICClientHello(t *testing.T) {
	for _, v := range []quic.Version{quic.Version1, quic.Version2} {
		t.Run(v.String(), func(t *testing.T) {
			dgrams, h := captureQUIC(t, &tls.Config{ServerName: "Api.Example", NextProtos: []string{"h3", "hq-interop"}},
				&quic.Config{Versions: []quic.Version{v}})
			if h.ServerName != "api.example" || !slices.Equal(h.ALPN, []string{"h3", "hq-interop"}) {
				t.Errorf("got %q %q, want api.example [h3 hq-interop]", h.ServerName, h.ALPN)
			}
			if len(dgrams) < 2 {
				t.Errorf("the ClientHello came in %d datagram(s); this test means to cover one spread over two or more", len(dgrams))
			}
			hdr, ok := ParseLongHeader(dgrams[0])
			if !ok || hdr.Version != uint32(v) || len(hdr.DCID) < 8 {
				t.Errorf("long header %+v %v", hdr, ok)
			}
		})
	}
}

// TestQUICClientHelloOneInitial: a classic key share keeps the hello in
// one Initial packet, which is enough on its own.
func TestQUICClientHelloOneInitial(t *testing.T) {
	dgrams, h := captureQUIC(t, &tls.Config{ServerName: "one.example", NextProtos: []string{"h3"},
		CurvePreferences: []tls.CurveID{tls.X25519}}, &quic.Config{})
	if h.ServerName != "one.example" || len(dgrams) != 1 {
		t.Errorf("got %q in %d datagrams, want one.example in 1", h.ServerName, len(dgrams))
	}
}

// sealInitial builds a client Initial packet of version v to dcid carrying
// frames, as a client would (for the cases a real client does not produce
// on demand: out-of-order CRYPTO frames, coalesced packets, bad input).
func sealInitial(t testing.TB, v uint32, dcid []byte, pn uint64, frames []byte) []byte {
	t.Helper()
	ver := quicVersions[v]
	initial, _ := hkdf.Extract(sha256.New, dcid, ver.salt)
	client := expandLabel(initial, "client in", 32)
	block, _ := aes.NewCipher(expandLabel(client, ver.key, 16))
	aead, _ := cipher.NewGCM(block)
	iv := expandLabel(client, ver.iv, 12)
	hp, _ := aes.NewCipher(expandLabel(client, ver.hp, 16))
	for len(frames) < 1162 { // pad like a client: Initial datagrams are at least 1,200 bytes
		frames = append(frames, 0)
	}
	const pnLen = 2
	hdr := []byte{0xc0 | ver.initialType<<4 | (pnLen - 1), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v), byte(len(dcid))}
	hdr = append(hdr, dcid...)
	hdr = append(hdr, 0, 0) // no SCID, no token
	length := pnLen + len(frames) + 16
	hdr = append(hdr, 0x40|byte(length>>8), byte(length))
	pnOff := len(hdr)
	hdr = append(hdr, byte(pn>>8), byte(pn))
	nonce := slices.Clone(iv)
	for i := range 8 {
		nonce[11-i] ^= byte(pn >> (8 * i))
	}
	pkt := aead.Seal(hdr, nonce, frames, hdr)
	var mask [16]byte
	hp.Encrypt(mask[:], pkt[pnOff+4:pnOff+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		pkt[pnOff+i] ^= mask[1+i]
	}
	return pkt
}

func cryptoFrame(off int, data []byte) []byte {
	f := []byte{0x06, 0x80 | byte(off>>24), byte(off >> 16), byte(off >> 8), byte(off), 0x40 | byte(len(data)>>8), byte(len(data))}
	return append(f, data...)
}

// helloMessage is a real ClientHello handshake message (no record header).
func helloMessage(t testing.TB, name string) []byte {
	t.Helper()
	rec := captureHello(t, &tls.Config{ServerName: name, NextProtos: []string{"h3"}})
	var msg []byte
	for len(rec) >= 5 {
		n := int(rec[3])<<8 | int(rec[4])
		msg = append(msg, rec[5:5+n]...)
		rec = rec[5+n:]
	}
	return msg
}

// TestQUICCryptoOutOfOrder: CRYPTO frames in any order, overlapping and
// repeated, across packets (as Chrome sends them) give the same hello.
func TestQUICCryptoOutOfOrder(t *testing.T) {
	msg := helloMessage(t, "shuffled.example")
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	a, b, c := len(msg)/3, len(msg)/2, 2*len(msg)/3
	p1 := sealInitial(t, QUICv1, dcid, 0, append(cryptoFrame(c, msg[c:]), append([]byte{0x01}, cryptoFrame(a, msg[a:b])...)...))
	p2 := sealInitial(t, QUICv1, dcid, 1, append(cryptoFrame(b-10, msg[b-10:c+5]), cryptoFrame(0, msg[:a])...))
	var q QUICInitial
	if _, err := q.Add(p1); !errors.Is(err, ErrNeedMore) {
		t.Fatalf("first packet: %v, want ErrNeedMore", err)
	}
	h, err := q.Add(p2)
	if err != nil || h.ServerName != "shuffled.example" {
		t.Fatalf("got %+v %v", h, err)
	}
}

// TestQUICCoalesced: an Initial coalesced with a 0-RTT packet in one
// datagram is read; the 0-RTT packet is skipped.
func TestQUICCoalesced(t *testing.T) {
	msg := helloMessage(t, "coalesced.example")
	dcid := []byte{9, 9, 9, 9, 9, 9, 9, 9}
	ini := sealInitial(t, QUICv2, dcid, 0, cryptoFrame(0, msg))
	zeroRTT := []byte{0xc0 | 2<<4, 0x6b, 0x33, 0x43, 0xcf, 8, 9, 9, 9, 9, 9, 9, 9, 9, 0, 0x40, 30}
	zeroRTT = append(zeroRTT, make([]byte, 30)...)
	var q QUICInitial
	h, err := q.Add(append(ini, zeroRTT...))
	if err != nil || h.ServerName != "coalesced.example" {
		t.Fatalf("got %+v %v", h, err)
	}
}

// TestQUICNotReadable: what is not a readable Initial is ErrNotQUIC, and
// bounds hold.
func TestQUICNotReadable(t *testing.T) {
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	good := sealInitial(t, QUICv1, dcid, 0, cryptoFrame(0, []byte{1, 0, 0, 50}))
	unknownVersion := slices.Clone(good)
	unknownVersion[4] = 7
	tampered := slices.Clone(good)
	tampered[len(tampered)-1] ^= 1
	for name, d := range map[string][]byte{
		"empty":           {},
		"short header":    {0x40, 1, 2, 3, 4, 5, 6, 7, 8},
		"dns":             {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0},
		"unknown version": unknownVersion,
		"tampered":        tampered,
		"truncated":       good[:40],
	} {
		var q QUICInitial
		if _, err := q.Add(d); !errors.Is(err, ErrNotQUIC) {
			t.Errorf("%s: %v, want ErrNotQUIC", name, err)
		}
	}
	// A hello that never completes gives up after MaxQUICInitials.
	var q QUICInitial
	var err error
	for i := range MaxQUICInitials + 1 {
		_, err = q.Add(sealInitial(t, QUICv1, dcid, uint64(i), []byte{0x01}))
	}
	if err == nil || errors.Is(err, ErrNeedMore) {
		t.Errorf("after %d Initials without a hello: %v", MaxQUICInitials+1, err)
	}
	// A CRYPTO frame beyond the size bound.
	q = QUICInitial{}
	if _, err := q.Add(sealInitial(t, QUICv1, dcid, 0, cryptoFrame(MaxHelloSize, []byte{1}))); err == nil || errors.Is(err, ErrNeedMore) {
		t.Errorf("oversized hello: %v", err)
	}
}

func TestDecodePacketNumber(t *testing.T) {
	// RFC 9000 Appendix A.3's example.
	if got := decodePacketNumber(0xa82f30ea, 0x9b32, 16); got != 0xa82f9b32 {
		t.Errorf("got %#x", got)
	}
	if got := decodePacketNumber(-1, 0, 8); got != 0 {
		t.Errorf("first packet: got %d", got)
	}
}

// FuzzQUICInitial: any sequence of datagrams is answered without a panic,
// and a hello, once found, is stable.
func FuzzQUICInitial(f *testing.F) {
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	msg := helloMessage(f, "fuzz.example")
	f.Add(sealInitial(f, QUICv1, dcid, 0, cryptoFrame(0, msg)), []byte{})
	f.Add(sealInitial(f, QUICv2, dcid, 0, cryptoFrame(0, msg[:100])), sealInitial(f, QUICv2, dcid, 1, cryptoFrame(100, msg[100:])))
	f.Add([]byte{0xc0, 0, 0, 0, 1, 0, 0}, []byte{0x40})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var q QUICInitial
		h1, err1 := q.Add(a)
		h2, err2 := q.Add(b)
		if err1 == nil && (h2 != h1 || err2 != nil) {
			t.Fatalf("a found hello changed: %v %v", h2, err2)
		}
		if err1 == nil && h1 == nil || err2 == nil && h2 == nil {
			t.Fatal("nil hello without an error")
		}
	})
}

// BenchmarkQUICInitial: reading a real client's ClientHello from its
// Initial packets (two, with Go's default key share), what a proxy spends
// per new QUIC client before routing it.
func BenchmarkQUICInitial(b *testing.B) {
	dgrams, _ := captureQUIC(b, &tls.Config{ServerName: "api.example", NextProtos: []string{"h3"}}, nil)
	b.ReportAllocs()
	for b.Loop() {
		var q QUICInitial
		for _, d := range dgrams {
			if _, err := q.Add(d); err != nil && !errors.Is(err, ErrNeedMore) {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(dgrams)), "datagrams/op")
}
