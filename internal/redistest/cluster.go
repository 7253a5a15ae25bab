package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a private Redis Cluster of masters without replicas.
type Cluster struct {
	Nodes []*Server
	// Addrs are the nodes' host:port.
	Addrs []string
	// URL is redis-cluster://addr1,addr2,….
	URL string
}

// StartCluster starts n redis-server nodes in cluster mode on free loopback
// ports, joins them into one cluster (redis-cli --cluster create) and waits
// until every node reports cluster_state:ok. Cleanup stops them.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 3 {
		t.Fatalf("a Redis Cluster needs at least 3 masters, not %d", n)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found on PATH (bash .ci/run installs it): %v", err)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redis-cli not found on PATH (it comes with redis-server): %v", err)
	}
	c := &Cluster{}
	for range n {
		s := &Server{dir: t.TempDir(), t: t, extra: []string{
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000"}}
		if err := s.startOnFreePort(bin, freeClusterPort, 10); err != nil {
			t.Fatalf("starting cluster node: %v", err)
		}
		t.Cleanup(s.Stop)
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	c.URL = "redis-cluster://" + strings.Join(c.Addrs, ",")
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, addr := range c.Addrs {
		for {
			state, err := clusterState(addr)
			if state == "ok" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s: state %q (%v) after 20s", addr, state, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return c
}

func clusterState(addr string) (string, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	info, err := rdb.ClusterInfo(context.Background()).Result()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "cluster_state:"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no cluster_state in CLUSTER INFO")
}

// freeClusterPort returns a free port whose cluster bus port (port+10000)
// is free too.
func freeClusterPort() (int, error) {
	for range 50 {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		if port+10000 > 65535 {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no free port with a free cluster bus port")
}
