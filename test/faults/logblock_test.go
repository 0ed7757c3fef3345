package faults

import (
	"bufio"
	"fmt"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestLoopServesWithStderrBlocked: the proxy's stderr is a pipe nobody
// reads once the proxy is up, with access_log on at debug level, so every
// connection logs and the pipe soon fills. The event loops must go on
// serving clients, dropping their log records and counting them in
// dynamic_proxy_log_records_dropped_total, instead of blocking on the write.
func TestLoopServesWithStderrBlocked(t *testing.T) {
	be := StartBackend(t, func(c net.Conn) {
		fmt.Fprintln(c, "hello")
		io.Copy(io.Discard, c)
	})
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, server("")+"level = \"debug\"\n"+noHealth+tcpRule("blocked", port, "b="+be.Addr))

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "--config", cfg)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		go io.Copy(io.Discard, r) // unblock whatever still writes
		<-exited
		r.Close()
	})

	// Read the log until the proxy is up and says where its metrics are;
	// from then on nobody reads it.
	var metricsURL string
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
			if strings.Contains(sc.Text(), "rule") && strings.Contains(sc.Text(), "name=blocked") {
				close(lines)
				return
			}
		}
		close(lines)
	}()
	addrRe := regexp.MustCompile(`address=(\S+)`)
	timeout := time.After(harness.Deadline)
	for done := false; !done; {
		select {
		case line, ok := <-lines:
			if !ok {
				done = true
				break
			}
			if strings.Contains(line, "metrics listening") {
				if m := addrRe.FindStringSubmatch(line); m != nil {
					metricsURL = "http://" + m[1] + "/metrics"
				}
			}
		case <-timeout:
			t.Fatal("the proxy did not start")
		}
	}
	if metricsURL == "" {
		t.Fatal("no metrics address in the log")
	}

	// Enough connections that their log lines overflow the pipe and the
	// log queue many times over; every one must be served.
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	const conns = 6000
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(harness.Deadline))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || line != "hello\n" {
			t.Fatalf("connection %d: got %q, %v", i, line, err)
		}
	}
	m := harness.Scrape(t, metricsURL)
	if m.Value("dynamic_proxy_log_records_dropped_total", nil) <= 0 {
		t.Error("no log record was dropped: the log output was not blocked, the test proved nothing")
	}
	t.Logf("%v log records dropped", m.Value("dynamic_proxy_log_records_dropped_total", nil))
}
