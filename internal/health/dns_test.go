package health

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
)

// answer turns query q into a response with rcode (and id changed by
// idDelta, the question by reask).
func answer(q []byte, rcode byte, idDelta uint16, reask bool) []byte {
	a := append([]byte(nil), q...)
	binary.BigEndian.PutUint16(a, binary.BigEndian.Uint16(a)+idDelta)
	a[2] |= 0x80
	a[3] = a[3]&0xf0 | rcode
	if reask {
		a[len(a)-3] ^= 0xff // another type
	}
	return a
}

// TestProbeDNS: a dns_query check passes on an answer to its query and
// fails, saying why, on SERVFAIL, a wrong id, another question, garbage,
// silence and a closed port; over UDP and over TCP.
func TestProbeDNS(t *testing.T) {
	dns := func(q string) func(*config.HealthCheck) {
		return func(h *config.HealthCheck) {
			h.DNSQuery = q
			h.Timeout = config.Duration(300 * time.Millisecond)
			h.Interval = config.Duration(time.Second)
		}
	}
	for _, tc := range []struct {
		name  string
		reply func(q []byte) []byte
		want  string // "" passes
	}{
		{"answer", func(q []byte) []byte { return answer(q, 0, 0, false) }, ""},
		{"nxdomain", func(q []byte) []byte { return answer(q, 3, 0, false) }, ""}, // the server works
		{"servfail", func(q []byte) []byte { return answer(q, 2, 0, false) }, "SERVFAIL"},
		{"wrong id", func(q []byte) []byte { return answer(q, 0, 1, false) }, "not the answer to the check's query"},
		{"other question", func(q []byte) []byte { return answer(q, 0, 0, true) }, "another question"},
		{"a query back", func(q []byte) []byte { return q }, "not the answer"},
		{"garbage", func([]byte) []byte { return []byte("hello") }, "not a DNS answer"},
		{"silence", func([]byte) []byte { return nil }, "no reply"},
	} {
		t.Run("udp "+tc.name, func(t *testing.T) {
			srv := startUDP(t, func(req []byte, _ int64) []byte { return tc.reply(req) })
			err := check(t, "udp", srv.addr, dns("example.test")).Probe(context.Background())
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	t.Run("tcp", func(t *testing.T) {
		srv := startTCP(t, func(c net.Conn, _ int64) {
			var l [2]byte
			if _, err := io.ReadFull(c, l[:]); err != nil {
				return
			}
			q := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(c, q); err != nil {
				return
			}
			a := answer(q, 0, 0, false)
			c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(a))), a...))
		})
		if err := check(t, "tcp", srv.addr, dns(".")).Probe(context.Background()); err != nil {
			t.Errorf("tcp dns check of the root: %v", err)
		}
	})
	if err := check(t, "udp", closedPort(t, "udp"), dns("example.test")).Probe(context.Background()); err == nil {
		t.Error("a closed port passed")
	}
}

func TestDNSQuestion(t *testing.T) {
	q := dnsQuestion(0x1234, "Example.Test.")
	want := []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'E', 'x', 'a', 'm', 'p', 'l', 'e', 4, 'T', 'e', 's', 't', 0, 0, 1, 0, 1}
	if string(q) != string(want) {
		t.Errorf("got %x\nwant %x", q, want)
	}
	if root := dnsQuestion(1, "."); string(root[12:]) != "\x00\x00\x02\x00\x01" {
		t.Errorf("root query %x", root[12:])
	}
}
