// Package redistest starts real Redis processes for tests: each on a free
// port of 127.0.0.1, with its own temporary directory, stopped when the test
// ends. It never uses a Redis already running on the machine. The Debian
// packages redis-server and redis-tools provide the binaries (scripts/test.sh
// installs them).
//
// Start gives one redis-server, or, when the environment has
// DP_TEST_REDIS=cluster, a Redis Cluster of three masters behind the same
// Server API (URL, Kill, Restart, Client), so that a suite runs unchanged
// against either shape. StartSentinel gives a master, a replica and three
// sentinels.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// Env is the environment variable that makes Start give a cluster.
const Env = "DP_TEST_REDIS"

// ClusterMode reports whether Start gives a cluster (DP_TEST_REDIS=cluster).
func ClusterMode() bool { return os.Getenv(Env) == "cluster" }

// Deadline bounds the wait for redis-server to start or stop.
const Deadline = 20 * time.Second

// Server is one redis-server process (or the place of one, between Kill
// and Restart), or a cluster of them (Nodes).
type Server struct {
	t    testing.TB
	Port int
	Addr string // 127.0.0.1:PORT (a cluster: its first node's)
	Dir  string // its working directory (dump/AOF files)
	TLS  bool   // it speaks TLS only (StartTLS)
	// Prefix is the default key prefix of a fleet on it:
	// "dynamic-proxy:", or "{dynamic-proxy}:" on a cluster.
	Prefix string
	// Nodes are a cluster's servers (nil: one server).
	Nodes []*Server
	args  []string
	ready string // the log line that says it accepts connections

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	out    []string
}

// Binary is the redis-server to run.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server"} {
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	t.Fatal("redis-server not found: install the Debian package redis-server (scripts/test.sh does)")
	return ""
}

// Start runs redis-server on a free port of 127.0.0.1 with no persistence
// unless extra arguments ask for it (e.g. "--appendonly", "yes"), and waits
// until it accepts connections.
// Under DP_TEST_REDIS=cluster it starts a cluster of three instead.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	if ClusterMode() {
		return StartCluster(t, 3, extra...)
	}
	return start(t, false, extra)
}

// StartTLS runs redis-server accepting TLS only, with the certificate and
// key in the given PEM files (clients are not asked for certificates).
// Under DP_TEST_REDIS=cluster it is a cluster of three such servers, whose
// bus speaks TLS too (the certificate is then also the CA the nodes and
// redis-cli verify each other with: a self-signed one that allows client
// authentication, as each node presents it to the others).
func StartTLS(t testing.TB, certFile, keyFile string, extra ...string) *Server {
	t.Helper()
	args := append([]string{"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no"}, extra...)
	if ClusterMode() {
		return startCluster(t, 3, certFile, append(args, "--tls-cluster", "yes", "--tls-ca-cert-file", certFile))
	}
	return start(t, true, args)
}

func start(t testing.TB, tls bool, extra []string) *Server {
	t.Helper()
	return startIn(t, t.TempDir(), tls, "Ready to accept connections", nil, extra)
}

// startIn starts a server in dir; lead goes before the options (a sentinel's
// config file), ready is the line that says it is up.
func startIn(t testing.TB, dir string, tls bool, ready string, lead, extra []string) *Server {
	t.Helper()
	s := &Server{t: t, Dir: dir, TLS: tls, ready: ready, Prefix: "dynamic-proxy:"}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.Port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		ports := []string{"--port", strconv.Itoa(s.Port)}
		if tls {
			ports = []string{"--port", "0", "--tls-port", strconv.Itoa(s.Port)}
		}
		s.args = append(append(append(lead, ports...), "--bind", "127.0.0.1", "--dir", s.Dir,
			"--save", "", "--appendonly", "no", "--logfile", "", "--daemonize", "no", "--loglevel", "notice"), extra...)
		if lastErr = s.start(); lastErr == nil {
			t.Cleanup(s.stop)
			return s
		}
	}
	t.Fatalf("redis-server would not start: %v", lastErr)
	return nil
}

// URL is redis://127.0.0.1:PORT, or rediss:// for TLS; for a cluster
// redis+cluster://NODE,NODE,NODE.
func (s *Server) URL() string {
	scheme := "redis"
	if s.TLS {
		scheme = "rediss"
	}
	if s.Nodes != nil {
		addrs := make([]string, len(s.Nodes))
		for i, n := range s.Nodes {
			addrs[i] = n.Addr
		}
		return scheme + "+cluster://" + strings.Join(addrs, ",")
	}
	return scheme + "://" + s.Addr
}

// Client is a client of it (of the cluster), closed when the test ends.
func (s *Server) Client() redis.UniversalClient {
	var c redis.UniversalClient
	if s.Nodes != nil {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{s.Addr}})
	} else {
		c = redis.NewClient(&redis.Options{Addr: s.Addr})
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) start() error {
	cmd := exec.Command(Binary(s.t), s.args...)
	cmd.Dir = s.Dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	ready := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.exited, s.out = cmd, exited, nil
	s.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.out = append(s.out, line)
			s.mu.Unlock()
			if strings.Contains(line, s.ready) {
				once.Do(func() { close(ready) })
			}
		}
		cmd.Wait()
		close(exited)
	}()
	select {
	case <-ready:
		return nil
	case <-exited:
		return fmt.Errorf("redis-server exited at start:\n%s", s.Output())
	case <-time.After(Deadline):
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("redis-server not ready within %v:\n%s", Deadline, s.Output())
	}
}

// Output is what redis-server logged since it last started.
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.out, "\n")
}

// Kill stops redis-server (every node of a cluster) with SIGKILL (no
// shutdown save) and waits until it is gone and its port is closed.
func (s *Server) Kill() {
	s.t.Helper()
	for _, n := range s.Nodes {
		n.Kill()
	}
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	select {
	case <-exited:
	case <-time.After(Deadline):
		s.t.Fatalf("redis-server did not exit within %v", Deadline)
	}
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}

// Restart starts redis-server again on the same port and directory (with
// --appendonly yes its data survives a Kill). A cluster's nodes all start
// again and meet from their nodes.conf; it does not wait for the cluster to
// be whole again (clients see CLUSTERDOWN until it is).
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	for _, n := range s.Nodes {
		if err := n.start(); err != nil {
			s.t.Fatal(err)
		}
	}
	if s.Nodes != nil {
		return
	}
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// StartCluster starts n redis-server with cluster-enabled yes and makes
// them a cluster of n masters (redis-cli --cluster create), waiting until
// every node reports cluster_state:ok.
func StartCluster(t testing.TB, n int, extra ...string) *Server {
	t.Helper()
	return startCluster(t, n, "", extra)
}

// startCluster is StartCluster; with caFile its nodes speak TLS only, and
// redis-cli verifies them against caFile.
func startCluster(t testing.TB, n int, caFile string, extra []string) *Server {
	t.Helper()
	tls := caFile != ""
	c := &Server{t: t, Prefix: "{dynamic-proxy}:", TLS: tls}
	args := append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"}, extra...)
	var cliTLS []string
	if tls {
		cliTLS = []string{"--tls", "--cacert", caFile}
	}
	create := append(slices.Clone(cliTLS), "--cluster", "create")
	for i := 0; i < n; i++ {
		node := start(t, tls, args)
		c.Nodes = append(c.Nodes, node)
		create = append(create, node.Addr)
	}
	c.Port, c.Addr, c.Dir = c.Nodes[0].Port, c.Nodes[0].Addr, c.Nodes[0].Dir
	create = append(create, "--cluster-replicas", "0", "--cluster-yes")
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli not found: install the Debian package redis-tools (scripts/test.sh does)")
	}
	if out, err := exec.Command(cli, create...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(create, " "), err, out)
	}
	for _, node := range c.Nodes {
		info := append(slices.Clone(cliTLS), "-h", "127.0.0.1", "-p", strconv.Itoa(node.Port), "cluster", "info")
		harness.Eventually(t, "cluster_state:ok on "+node.Addr, func() error {
			out, err := exec.Command(cli, info...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "cluster_state:ok") {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	}
	return c
}

// Sentinel is a master, its replica and three sentinels monitoring them
// under the master name "mymaster".
type Sentinel struct {
	t          testing.TB
	Master     string    // the master name
	Data       []*Server // [0] the first master, [1] its replica
	Sentinels  []*Server
	sentinelsC []*redis.SentinelClient
}

// StartSentinel starts a master, a replica of it and three sentinels
// (quorum 2), and waits until every sentinel knows the replica as healthy,
// so that a failover can happen.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	s := &Sentinel{t: t, Master: "mymaster"}
	master := start(t, false, nil)
	replica := start(t, false, []string{"--replicaof", "127.0.0.1", strconv.Itoa(master.Port)})
	s.Data = []*Server{master, replica}
	for i := 0; i < 3; i++ {
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 2\nsentinel down-after-milliseconds %s 2000\nsentinel failover-timeout %s 10000\n",
			s.Master, master.Port, s.Master, s.Master)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		sn := startIn(t, dir, false, "+monitor master", []string{conf, "--sentinel"}, nil)
		s.Sentinels = append(s.Sentinels, sn)
		c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr})
		t.Cleanup(func() { c.Close() })
		s.sentinelsC = append(s.sentinelsC, c)
	}
	ctx := context.Background()
	for i, c := range s.sentinelsC {
		harness.Eventually(t, "sentinel "+s.Sentinels[i].Addr+" sees the replica", func() error {
			reps, err := c.Replicas(ctx, s.Master).Result()
			if err != nil {
				return err
			}
			if len(reps) != 1 || reps[0]["master-link-status"] != "ok" || strings.Contains(reps[0]["flags"], "down") || strings.Contains(reps[0]["flags"], "disconnected") {
				return fmt.Errorf("replicas %v", reps)
			}
			return nil
		})
	}
	return s
}

// WaitPeers waits until every sentinel knows the two others, which an
// election (a failover after the master died) needs.
func (s *Sentinel) WaitPeers() {
	s.t.Helper()
	for i, c := range s.sentinelsC {
		harness.Eventually(s.t, "sentinel "+s.Sentinels[i].Addr+" knows the other sentinels", func() error {
			sens, err := c.Sentinels(context.Background(), s.Master).Result()
			if err != nil || len(sens) != len(s.Sentinels)-1 {
				return fmt.Errorf("other sentinels %v %v", sens, err)
			}
			return nil
		})
	}
}

// URL is redis+sentinel://S1,S2,S3/mymaster.
func (s *Sentinel) URL() string {
	addrs := make([]string, len(s.Sentinels))
	for i, n := range s.Sentinels {
		addrs[i] = n.Addr
	}
	return "redis+sentinel://" + strings.Join(addrs, ",") + "/" + s.Master
}

// MasterAddr is the master's address as the sentinels agree on it ("" while
// they do not).
func (s *Sentinel) MasterAddr() string {
	var agreed string
	for i, c := range s.sentinelsC {
		a, err := c.GetMasterAddrByName(context.Background(), s.Master).Result()
		if err != nil || len(a) != 2 {
			return ""
		}
		addr := net.JoinHostPort(a[0], a[1])
		if i > 0 && addr != agreed {
			return ""
		}
		agreed = addr
	}
	return agreed
}

// Failover runs SENTINEL FAILOVER and waits for its end: every sentinel
// names the former replica as the master, which says it is one. (The
// sentinels make the former master a replica of it seconds later.) It
// returns the new master's address.
func (s *Sentinel) Failover() string {
	s.t.Helper()
	ctx := context.Background()
	old := s.MasterAddr()
	if old == "" {
		s.t.Fatal("the sentinels do not agree on a master before the failover")
	}
	if err := s.sentinelsC[0].Failover(ctx, s.Master).Err(); err != nil {
		s.t.Fatalf("SENTINEL FAILOVER: %v", err)
	}
	var next string
	harness.Eventually(s.t, "the failover's end", func() error {
		next = s.MasterAddr()
		if next == "" || next == old {
			return fmt.Errorf("the sentinels name %q", next)
		}
		c := redis.NewClient(&redis.Options{Addr: next})
		defer c.Close()
		info, err := c.Info(ctx, "replication").Result()
		if err != nil || !strings.Contains(info, "role:master") {
			return fmt.Errorf("%s: %v %s", next, err, info)
		}
		return nil
	})
	return next
}

func (s *Server) stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
	if s.t.Failed() {
		s.t.Logf("redis-server %s log:\n%s", s.Addr, s.Output())
	}
}
