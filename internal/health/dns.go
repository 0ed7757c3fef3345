package health

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"

	"github.com/dynamic-proxy/dynamic-proxy/internal/dnsmsg"
)

// probeDNS asks conn's DNS server for c.DNSQuery (type A; NS for the root)
// and judges its answer: it must carry the query's id and question, be a
// response, and not be SERVFAIL (a resolver that cannot resolve). Over TCP
// the messages are length-prefixed (RFC 1035 §4.2.2).
func (c *Check) probeDNS(conn net.Conn) error {
	id := uint16(rand.Uint32())
	q := dnsQuestion(id, c.DNSQuery)
	bp := bufPool.Get().(*[]byte) // the probes' reply buffers (check.go)
	defer bufPool.Put(bp)
	reply := *bp
	var n int
	var err error
	if c.Protocol == "tcp" {
		if _, err = conn.Write(binary.BigEndian.AppendUint16(nil, uint16(len(q)))); err == nil {
			_, err = conn.Write(q)
		}
		if err != nil {
			return err
		}
		var l [2]byte
		if _, err = io.ReadFull(conn, l[:]); err == nil {
			n = min(int(binary.BigEndian.Uint16(l[:])), len(reply))
			_, err = io.ReadFull(conn, reply[:n])
		}
	} else {
		if _, err = conn.Write(q); err != nil {
			return err
		}
		n, err = conn.Read(reply)
	}
	if err != nil {
		return c.readErr(err, nil)
	}
	return judgeDNS(reply[:n], id, q)
}

// dnsQuestion is a DNS query with id for name (RD not set: the server
// answers from what it has).
func dnsQuestion(id uint16, name string) []byte {
	m := binary.BigEndian.AppendUint16(nil, id)
	m = append(m, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)
	qtype := uint16(1) // A
	if n := strings.TrimSuffix(name, "."); n != "" {
		for _, l := range strings.Split(n, ".") {
			m = append(m, byte(len(l)))
			m = append(m, l...)
		}
	} else {
		qtype = 2 // NS of the root
	}
	m = append(m, 0)
	m = binary.BigEndian.AppendUint16(m, qtype)
	return binary.BigEndian.AppendUint16(m, 1) // IN
}

// judgeDNS decides on a DNS check's answer to query q with id.
func judgeDNS(a []byte, id uint16, q []byte) error {
	h, err := dnsmsg.ParseHeader(a)
	switch {
	case err != nil:
		return fmt.Errorf("not a DNS answer: %d bytes", len(a))
	case h.ID != id || !h.Response:
		return fmt.Errorf("not the answer to the check's query (id %d, response %v; want id %d)", h.ID, h.Response, id)
	case h.RCode == 2:
		return errors.New("the DNS server answered SERVFAIL")
	}
	want, _ := dnsmsg.Question(q)
	if got, err := dnsmsg.Question(a); err == nil && !bytes.EqualFold(got, want) {
		return errors.New("the DNS answer is for another question")
	}
	return nil
}
