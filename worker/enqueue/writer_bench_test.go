package enqueue

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/internal/redistest"
)

// BenchmarkEnqueue compares, on one private redis-server, asynq.Client (one
// round trip per task) with a Writer (one per batch), 32 goroutines each,
// with a fan-out-sized payload. Besides ns/op (wall time per task, which on
// a box shared with Redis says little) it reports the CPU time per task of
// this process (client-µs/op) and of redis-server (redis-µs/op): compare
// the two sub-benchmarks of one run.
func BenchmarkEnqueue(b *testing.B) {
	srv := redistest.Start(b)
	payload := bytes.Repeat([]byte("x"), 1200)
	var seq atomic.Int64
	msg := func() Message {
		return Message{Type: "event:fanout", ID: fmt.Sprintf("evt_%d", seq.Add(1)), Queue: "authtap_fanout",
			Payload: payload, MaxRetry: 25, Retention: 24 * time.Hour}
	}
	b.Run("asynq.Client", func(b *testing.B) {
		rdb := client(b, srv, 0)
		ac := asynq.NewClientFromRedisClient(rdb)
		b.SetParallelism(16) // 32 goroutines on 2 cores
		cpu := startCPU(b, rdb)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := ac.EnqueueContext(context.Background(), msg().Task()); err != nil {
					b.Error(err)
					return
				}
			}
		})
		cpu.report(b)
	})
	b.Run("Writer", func(b *testing.B) {
		rdb := client(b, srv, 1)
		w := writer(b, rdb)
		b.SetParallelism(16)
		cpu := startCPU(b, rdb)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := w.Enqueue(context.Background(), msg(), time.Second); err != nil {
					b.Error(err)
					return
				}
			}
		})
		cpu.report(b)
	})
}

// cpuMeter reads the CPU time of this process and of redis-server.
type cpuMeter struct {
	rdb          *redis.Client
	self, server time.Duration
}

func startCPU(b *testing.B, rdb *redis.Client) *cpuMeter {
	m := &cpuMeter{rdb: rdb}
	m.self, m.server = selfCPU(), redisCPU(b, rdb)
	b.ResetTimer()
	return m
}

func (m *cpuMeter) report(b *testing.B) {
	b.StopTimer()
	self, server := selfCPU()-m.self, redisCPU(b, m.rdb)-m.server
	b.ReportMetric(float64(self.Microseconds())/float64(b.N), "client-µs/op")
	b.ReportMetric(float64(server.Microseconds())/float64(b.N), "redis-µs/op")
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is used_cpu_user + used_cpu_sys from INFO cpu.
func redisCPU(b *testing.B, rdb *redis.Client) time.Duration {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}
