package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// cnClient is a TCP client of the proxy that knows its backend.
type cnClient struct {
	c       net.Conn
	r       *bufio.Reader
	backend string
}

// cnDial connects to addr from local (nil: any) and reads the backend's greeting.
func cnDial(t *testing.T, addr string, local net.Addr) *cnClient {
	t.Helper()
	c, err := (&net.Dialer{LocalAddr: local, Timeout: harness.Deadline}).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(harness.Deadline))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	return &cnClient{c: c, r: r, backend: strings.TrimSpace(name)}
}

// echo checks that the connection still carries bytes both ways.
func (c *cnClient) echo(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(c.c, s+"\n"); err != nil {
		t.Fatalf("connection to %s: write: %v", c.backend, err)
	}
	if line, err := c.r.ReadString('\n'); err != nil || line != s+"\n" {
		t.Fatalf("connection to %s: echo %q: %q %v", c.backend, s, line, err)
	}
}

// closed checks that the proxy closed the connection: EOF or a reset.
func (c *cnClient) closed(t *testing.T) {
	t.Helper()
	c.c.SetReadDeadline(time.Now().Add(harness.Deadline))
	_, err := c.r.ReadByte()
	if err == nil || isTimeout(err) {
		t.Fatalf("connection to %s: want EOF or a reset, got %v", c.backend, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// cnList asks the admin API for the connections a query selects.
func cnList(a *mxAdmin, query string) (total int, conns []map[string]any, next string) {
	a.t.Helper()
	m := a.must("GET", "/api/v1/connections?"+query, "")
	for _, c := range m["connections"].([]any) {
		conns = append(conns, c.(map[string]any))
	}
	next, _ = m["next"].(string)
	return int(m["total"].(float64)), conns, next
}

func cnID(c map[string]any) string { return strconv.FormatUint(uint64(c["id"].(float64)), 10) }

// TestConnectionsAPI lists, filters, pages and closes TCP connections and
// UDP sessions through the admin API: a closed TCP client sees EOF or a
// reset while the others carry on, a closed UDP session's client gets a
// new session, and the id is the access log's.
func TestConnectionsAPI(t *testing.T) {
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	u1, u2 := StartUDPEcho(t, "u1"), StartUDPEcho(t, "u2")
	tcpPort, udpPort := harness.FreePort(t), harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
udp_bind = "127.0.0.1:%d"
[logging]
access_log = true

[[rules]]
name = "web"
router = "round_robin"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q

[[rules]]
name = "game"
protocol = "udp"
router = "round_robin"
[[rules.backends]]
id = "u1"
address = %q
[[rules.backends]]
id = "u2"
address = %q
`, tcpPort, udpPort, ea.Addr, eb.Addr, u1.Addr, u2.Addr)))
	p.WaitLog("listening", "protocol=udp")
	adm := mxAdminOf(t, p, "")
	addr := fmt.Sprintf("127.0.0.1:%d", tcpPort)

	// Four TCP clients, two on each backend; the last from 127.0.0.2.
	var tcp []*cnClient
	for i := range 4 {
		var local net.Addr
		if i == 3 {
			local = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
		}
		c := cnDial(t, addr, local)
		c.echo(t, "hello")
		tcp = append(tcp, c)
	}
	if tcp[0].backend != "a" || tcp[1].backend != "b" || tcp[2].backend != "a" || tcp[3].backend != "b" {
		t.Fatalf("round robin sent the clients to %s %s %s %s", tcp[0].backend, tcp[1].backend, tcp[2].backend, tcp[3].backend)
	}
	// Two UDP sessions, one on each backend.
	ua, ub := dialUDP(t, udpPort), dialUDP(t, udpPort)
	mustExchange(t, ua, "x", "u1:x")
	mustExchange(t, ub, "y", "u2:y")

	// A direction's bytes are counted once its write returns, which can be
	// just after the echo reached the client: wait for every count.
	var total int
	var all []map[string]any
	harness.Eventually(t, "every connection's bytes counted", func() bool {
		total, all, _ = cnList(adm, "")
		var in float64
		for _, c := range all {
			in += c["bytes_in"].(float64)
		}
		return in >= 4*6+2
	})
	if total != 6 || len(all) != 6 {
		t.Fatalf("listed %d (%d entries), want 6: %v", total, len(all), all)
	}
	byClient := map[string]map[string]any{}
	for _, c := range all {
		byClient[c["client"].(string)] = c
	}
	for _, c := range tcp {
		e := byClient[c.c.LocalAddr().String()]
		if e == nil {
			t.Fatalf("no entry for client %s: %v", c.c.LocalAddr(), all)
		}
		if e["protocol"] != "tcp" || e["rule"] != "web" || e["backend"] != c.backend || e["local"] != addr ||
			e["state"] != "established" || e["bytes_in"] != float64(6) || e["bytes_out"].(float64) < 8 ||
			e["age_seconds"].(float64) < 0 || e["idle_seconds"].(float64) < 0 {
			t.Errorf("entry of %s: %v", c.c.LocalAddr(), e)
		}
	}
	if e := byClient[ua.LocalAddr().String()]; e == nil || e["protocol"] != "udp" || e["rule"] != "game" || e["backend"] != "u1" ||
		e["bytes_in"] != float64(1) || e["bytes_out"] != float64(4) || e["local"] != fmt.Sprintf("127.0.0.1:%d", udpPort) {
		t.Errorf("entry of the UDP client: %v", e)
	}

	// Filters.
	for q, want := range map[string]int{
		"protocol=tcp": 4, "protocol=udp": 2, "rule=web&backend=a": 2, "backend=u2": 1,
		"client=127.0.0.2": 1, "client=127.0.0.0/8": 6, "client=10.0.0.0/8": 0, "rule=nope": 0,
	} {
		if n, _, _ := cnList(adm, q); n != want {
			t.Errorf("?%s: %d connections, want %d", q, n, want)
		}
	}
	if code, m := adm.call("GET", "/api/v1/connections?client=banana", ""); code != 400 {
		t.Errorf("a bad client filter: %d %v", code, m)
	}

	// Pages of 4 then the rest, by ascending id, cover every connection once.
	_, page1, next := cnList(adm, "limit=4")
	if len(page1) != 4 || next == "" {
		t.Fatalf("first page: %d entries, next %q", len(page1), next)
	}
	_, page2, next2 := cnList(adm, "limit=4&after="+next)
	if len(page2) != 2 || next2 != "" {
		t.Fatalf("second page: %d entries, next %q", len(page2), next2)
	}
	seen := map[string]bool{}
	last := 0.0
	for _, c := range append(page1, page2...) {
		if id := c["id"].(float64); id <= last {
			t.Fatalf("ids not ascending: %v", append(page1, page2...))
		} else {
			last = id
		}
		seen[cnID(c)] = true
	}
	if len(seen) != 6 {
		t.Fatalf("pages covered %d connections, want 6", len(seen))
	}

	// Close one TCP connection by id: it ends, the others carry on.
	id := cnID(byClient[tcp[0].c.LocalAddr().String()])
	if m := adm.must("POST", "/api/v1/connections/"+id+"/close", ""); m["closed"] != float64(1) {
		t.Fatalf("close by id answered %v", m)
	}
	tcp[0].closed(t)
	for _, c := range tcp[1:] {
		c.echo(t, "still")
	}
	p.WaitLog("connection closed", "conn="+id+" ", "backend=a", "end=closed")
	if code, _ := adm.call("POST", "/api/v1/connections/"+id+"/close", ""); code != 404 {
		t.Errorf("closing a closed connection: %d, want 404", code)
	}

	// Close every connection of a client, then of a backend.
	if m := adm.must("POST", "/api/v1/connections/close?client=127.0.0.2", ""); m["closed"] != float64(1) {
		t.Fatalf("close by client answered %v", m)
	}
	tcp[3].closed(t)
	tcp[1].echo(t, "b lives")
	tcp[2].echo(t, "a lives")
	if m := adm.must("POST", "/api/v1/connections/close?rule=web&backend=b", ""); m["closed"] != float64(1) {
		t.Fatalf("close by backend answered %v", m)
	}
	tcp[1].closed(t)
	tcp[2].echo(t, "a still lives")
	if code, _ := adm.call("POST", "/api/v1/connections/close", ""); code != 400 {
		t.Errorf("closing without a filter: %d, want 400", code)
	}

	// Close a UDP session by id: its client's next datagram opens a new one.
	uid := cnID(byClient[ua.LocalAddr().String()])
	adm.must("POST", "/api/v1/connections/"+uid+"/close", "")
	p.WaitLog("udp session closed", "conn="+uid+" ", "backend=u1", "end=closed")
	mustExchange(t, ub, "y2", "u2:y2") // the other session carries on
	if _, err := UDPExchange(ua, "x2"); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "a new session for the closed UDP client", func() bool {
		n, cs, _ := cnList(adm, "protocol=udp&client="+strings.Split(ua.LocalAddr().String(), ":")[0])
		if n != 2 {
			return false
		}
		for _, c := range cs {
			if c["client"] == ua.LocalAddr().String() {
				return cnID(c) != uid
			}
		}
		return false
	})
	if n, _, _ := cnList(adm, "protocol=tcp"); n != 1 {
		t.Errorf("%d TCP connections left, want 1", n)
	}
	p.WaitLog("admin API: connections closed", "connections=1")
}
