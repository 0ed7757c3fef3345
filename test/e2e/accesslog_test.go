//go:build unix

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// accessRecord is one line of a text access log.
type accessRecord struct {
	msg     string
	bytesIn int64
	line    string
}

var (
	msgRe     = regexp.MustCompile(`msg="([^"]+)"`)
	bytesInRe = regexp.MustCompile(`bytes_in=(\d+)`)
)

// readAccessLog returns the connection records of the access log file at path.
func readAccessLog(t *testing.T, path string) []accessRecord {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []accessRecord
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		m, b := msgRe.FindStringSubmatch(line), bytesInRe.FindStringSubmatch(line)
		if m == nil || b == nil {
			continue
		}
		n, _ := strconv.ParseInt(b[1], 10, 64)
		out = append(out, accessRecord{msg: m[1], bytesIn: n, line: line})
	}
	return out
}

func countMsg(rs []accessRecord, msg string) int {
	n := 0
	for _, r := range rs {
		if r.msg == msg {
			n++
		}
	}
	return n
}

// TestAccessLogProgressAndReopen: a 10 s stream with access_log_interval
// = "2s" gets 4 or 5 progress records with growing byte counts, then its
// final record, all in access_log_file; the file is moved away after the
// second progress record and SIGUSR1 makes the log continue in a new file
// at the path.
func TestAccessLogProgressAndReopen(t *testing.T) {
	echo := StartEcho(t, "e")
	port := harness.FreePort(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[logging]
access_log = true
access_log_interval = "2s"
access_log_file = %q
[health_check]
enabled = false
[[rules]]
name = "stream"
[[rules.backends]]
id = "e"
address = %q
`, port, path, echo.Addr)))
	p.WaitLog("access log", "file="+path)

	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(harness.Deadline))
	if g, err := br.ReadString('\n'); err != nil || g != "e\n" {
		t.Fatalf("greeting %q %v", g, err)
	}
	go io.Copy(io.Discard, br) // the echoes
	// The stream: 1 KiB every 100 ms for 10 s, then the end.
	streamed := make(chan error, 1)
	go func() {
		chunk := make([]byte, 1024)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
			<-tick.C
			if _, err := c.Write(chunk); err != nil {
				streamed <- err
				return
			}
		}
		streamed <- c.(*net.TCPConn).CloseWrite()
	}()

	harness.Eventually(t, "two progress records in the access log", func() bool {
		return countMsg(readAccessLog(t, path), "connection progress") >= 2
	})
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	from := p.NumLines()
	p.Signal(syscall.SIGUSR1)
	p.WaitLogFrom(from, "SIGUSR1: access log reopened", "file="+path)
	if err := <-streamed; err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the final record in the new file", func() bool {
		return countMsg(readAccessLog(t, path), "connection closed") == 1
	})

	old, cur := readAccessLog(t, path+".1"), readAccessLog(t, path)
	if countMsg(old, "connection closed") != 0 || countMsg(old, "connection progress") < 2 || countMsg(cur, "connection progress") < 1 {
		t.Fatalf("old file %v, new file %v: want the first progress records in the old one, later ones and the final record in the new one", old, cur)
	}
	all := append(old, cur...)
	for _, r := range all {
		t.Log(r.line)
	}
	progress := countMsg(all, "connection progress")
	if progress < 4 || progress > 5 {
		t.Fatalf("%d progress records for a 10 s stream at a 2 s interval, want 4 or 5:\n%v", progress, all)
	}
	if last := all[len(all)-1]; last.msg != "connection closed" || last.bytesIn != 100*1024 && last.bytesIn < 90*1024 {
		t.Fatalf("the last record: %q", last.line)
	}
	for i := 1; i < len(all); i++ {
		if all[i].bytesIn <= all[i-1].bytesIn {
			t.Fatalf("bytes_in does not grow from record %d to %d:\n%s\n%s", i-1, i, all[i-1].line, all[i].line)
		}
		if !strings.Contains(all[i].line, "rule=stream") || !strings.Contains(all[i].line, "backend=e") {
			t.Fatalf("record without its rule and backend: %s", all[i].line)
		}
	}
	if n := p.Count("connection progress") + p.Count("connection closed"); n != 0 {
		t.Fatalf("%d access log records on stderr besides the file", n)
	}
}

var datagramsInRe = regexp.MustCompile(`datagrams_in=(\d+)`)

// TestAccessLogUDPProgress: a UDP session that lasts over two intervals
// gets "udp session progress" records with growing datagram counts, on
// stderr when no access_log_file is set.
func TestAccessLogUDPProgress(t *testing.T) {
	u := StartUDPEcho(t, "u")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
udp_bind = "127.0.0.1:%d"
[logging]
access_log = true
access_log_interval = "1s"
[health_check]
enabled = false
[[rules]]
name = "game"
protocol = "udp"
[[rules.backends]]
id = "u"
address = %q
`, harness.FreePort(t), port, u.Addr)))
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go io.Copy(io.Discard, c)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a datagram every 100 ms until the test ends
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				c.Write([]byte("ping"))
			}
		}
	}()
	p.WaitLog(`msg="udp session progress"`, "rule=game", "backend=u")
	first := p.WaitLog(`msg="udp session progress"`)
	from := p.NumLines()
	second := p.WaitLogFrom(from, `msg="udp session progress"`)
	n1, _ := strconv.Atoi(datagramsInRe.FindStringSubmatch(first)[1])
	n2, _ := strconv.Atoi(datagramsInRe.FindStringSubmatch(second)[1])
	if n1 <= 0 || n2 <= n1 || !strings.Contains(second, "bytes_in=") {
		t.Fatalf("progress records do not grow:\n%s\n%s", first, second)
	}
}
