// Command goclient is the benchmarks' receiving client in Go: the same worker as bench/wsclient.py
// (same stdin/stdout JSON-lines commands, same shared counters file, same latency buckets), for
// when a Python client on 2 cores would be the bottleneck instead of the server under test.
//
// It speaks just enough RFC 6455 to subscribe and count, with the standard library only: one
// goroutine per connection reads frames through a 64 KiB buffer, counts each text frame that
// carries a publication (one with the payload's "ts": key), reads the sender's timestamp on
// every --latency-every-th connection, answers pings, and echoes a close.
//
// With "protocol": "centrifugo" in the open command it speaks Centrifugo's JSON protocol instead:
// a connect command carrying the JWT, then a subscribe, each answered by id; publications pushed
// several to a frame (one JSON object a line, each counted); {} pings answered with {}.
//
//	go build -o .cache/bench/wsclient-go ./bench/goclient    (bench/harness.py does this itself)
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

var (
	tsMarker       = []byte(`"ts":`)
	centrifugoPing = []byte(`{}`) // an empty command: the server's ping, and the client's pong
)

const protocolCentrifugo = "centrifugo"

const (
	histFloor = 1e-6
	histPerE  = 50.0 // buckets per factor e, as in wsclient.Histogram
)

// ---------------------------------------------------------------------------------- latency

type histogram struct {
	mu     sync.Mutex
	counts map[int]int64
	max    float64
}

func newHistogram() *histogram { return &histogram{counts: map[int]int64{}} }

func (h *histogram) addAll(samples []float64) {
	h.mu.Lock()
	for _, s := range samples {
		bucket := 0
		if s > histFloor {
			bucket = int(math.Log(s/histFloor) * histPerE)
		}
		h.counts[bucket]++
		if s > h.max {
			h.max = s
		}
	}
	h.mu.Unlock()
}

// ---------------------------------------------------------------------------------- framing

// clientFrame: a final, masked client frame with a zero masking key (see wsclient.client_frame).
func clientFrame(opcode byte, payload []byte) []byte {
	n := len(payload)
	var head []byte
	switch {
	case n < 126:
		head = []byte{0x80 | opcode, 0x80 | byte(n)}
	case n < 65536:
		head = []byte{0x80 | opcode, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		head = make([]byte, 10)
		head[0], head[1] = 0x80|opcode, 0x80|127
		binary.BigEndian.PutUint64(head[2:], uint64(n))
	}
	out := make([]byte, 0, len(head)+4+n)
	out = append(out, head...)
	out = append(out, 0, 0, 0, 0)
	return append(out, payload...)
}

type conn struct {
	nc        net.Conn
	rd        *bufio.Reader
	wmu       sync.Mutex
	open      atomic.Bool
	closeSent atomic.Bool
	closeCode atomic.Int32
	latency   bool
	centri    bool // Centrifugo's protocol: answer {} pings
	done      chan struct{}
}

// hasCentrifugoPing: a {} line in a text frame (alone, or batched with pushes and replies).
func hasCentrifugoPing(payload []byte) bool {
	return bytes.Equal(payload, centrifugoPing) || bytes.HasPrefix(payload, []byte("{}\n")) ||
		bytes.Contains(payload, []byte("\n{}"))
}

// centrifugoRequest sends one Centrifugo command and reads frames until the reply with its id.
func (c *conn) centrifugoRequest(id uint32, method string, params any) error {
	cmd, _ := json.Marshal(map[string]any{"id": id, method: params})
	if err := c.write(clientFrame(0x1, cmd)); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		op, payload, err := c.readFrame(buf)
		if err != nil {
			return err
		}
		if op != 0x1 {
			continue
		}
		for _, line := range bytes.Split(payload, []byte("\n")) {
			if len(line) == 0 || bytes.Equal(line, centrifugoPing) {
				continue
			}
			var reply struct {
				ID    uint32          `json:"id"`
				Error json.RawMessage `json:"error"`
			}
			if err := json.Unmarshal(line, &reply); err != nil {
				return fmt.Errorf("RuntimeError: bad reply to %s: %.80s", method, line)
			}
			if reply.ID != id {
				continue
			}
			if reply.Error != nil {
				return fmt.Errorf("RuntimeError: %s refused: %s", method, reply.Error)
			}
			return nil
		}
	}
}

func (c *conn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

// readFrame returns the opcode and payload of the next frame (the payload buffer is reused).
func (c *conn) readFrame(buf []byte) (byte, []byte, error) {
	var head [10]byte
	if _, err := io.ReadFull(c.rd, head[:2]); err != nil {
		return 0, nil, err
	}
	length := uint64(head[1] & 0x7f)
	switch length {
	case 126:
		if _, err := io.ReadFull(c.rd, head[2:4]); err != nil {
			return 0, nil, err
		}
		length = uint64(binary.BigEndian.Uint16(head[2:4]))
	case 127:
		if _, err := io.ReadFull(c.rd, head[2:10]); err != nil {
			return 0, nil, err
		}
		length = binary.BigEndian.Uint64(head[2:10])
	}
	if uint64(cap(buf)) < length {
		buf = make([]byte, length)
	}
	buf = buf[:length]
	if _, err := io.ReadFull(c.rd, buf); err != nil {
		return 0, nil, err
	}
	return head[0] & 0x0f, buf, nil
}

// ---------------------------------------------------------------------------------- worker

type worker struct {
	counter   *int64 // this worker's slot in the shared counters file
	delivered atomic.Int64
	hist      atomic.Pointer[histogram]
	mu        sync.Mutex
	conns     []*conn
}

func (w *worker) count(n int64) {
	total := w.delivered.Add(n)
	if w.counter != nil {
		atomic.StoreInt64(w.counter, total)
	}
}

type openRequest struct {
	Host         string            `json:"host"`
	Port         int               `json:"port"`
	Path         string            `json:"path"`
	Count        int               `json:"count"`
	Channels     []string          `json:"channels"`
	Headers      map[string]string `json:"headers"`
	LatencyEvery int               `json:"latency_every"`
	Concurrency  int               `json:"concurrency"`
	Protocol     string            `json:"protocol"` // "obsgen" (default) or "centrifugo"
	Token        string            `json:"token"`    // Centrifugo: the JWT sent in the connect command
}

func (w *worker) dial(req *openRequest, channel string, latency bool) (*conn, error) {
	address := net.JoinHostPort(req.Host, strconv.Itoa(req.Port))
	nc, err := net.DialTimeout("tcp", address, 30*time.Second)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	key := make([]byte, 16)
	rand.Read(key)
	path := req.Path
	if path == "" {
		path = "/"
	}
	var request strings.Builder
	fmt.Fprintf(&request, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", path, address, base64.StdEncoding.EncodeToString(key))
	for name, value := range req.Headers {
		fmt.Fprintf(&request, "%s: %s\r\n", name, value)
	}
	request.WriteString("\r\n")
	c := &conn{nc: nc, rd: bufio.NewReaderSize(nc, 64*1024), latency: latency, done: make(chan struct{}),
		centri: req.Protocol == protocolCentrifugo}
	fail := func(err error) (*conn, error) { nc.Close(); return nil, err }
	if _, err := nc.Write([]byte(request.String())); err != nil {
		return fail(err)
	}
	status, err := c.rd.ReadString('\n')
	if err != nil {
		return fail(fmt.Errorf("HandshakeError: %v", err))
	}
	if !strings.HasPrefix(status, "HTTP/1.1 101") {
		return fail(fmt.Errorf("HandshakeError: %s", strings.TrimSpace(status)))
	}
	for {
		line, err := c.rd.ReadString('\n')
		if err != nil {
			return fail(fmt.Errorf("HandshakeError: %v", err))
		}
		if line == "\r\n" {
			break
		}
	}
	c.open.Store(true)
	if c.centri {
		if err := c.centrifugoRequest(1, "connect", map[string]string{"token": req.Token}); err != nil {
			return fail(err)
		}
		if channel != "" {
			if err := c.centrifugoRequest(2, "subscribe", map[string]string{"channel": channel}); err != nil {
				return fail(err)
			}
		}
	} else if channel != "" {
		cmd, _ := json.Marshal(map[string]any{"type": "subscribe", "payload": map[string]string{"channel": channel},
			"metadata": map[string]string{"message_id": "s1"}})
		if err := c.write(clientFrame(0x1, cmd)); err != nil {
			return fail(err)
		}
		buf := make([]byte, 4096)
		for { // the "connected" event, then the reply to the subscribe
			op, payload, err := c.readFrame(buf)
			if err != nil {
				return fail(err)
			}
			if op != 0x1 {
				continue
			}
			head := payload[:min(len(payload), 20)]
			if bytes.Contains(head, []byte(`"ack"`)) {
				break
			}
			if bytes.Contains(head, []byte(`"error"`)) {
				return fail(fmt.Errorf("RuntimeError: subscribe refused: %s", payload))
			}
		}
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

func (w *worker) read(c *conn) {
	defer close(c.done)
	defer c.nc.Close()
	buf := make([]byte, 4096)
	var samples []float64
	for {
		if c.rd.Buffered() == 0 && len(samples) > 0 {
			w.hist.Load().addAll(samples) // before blocking in a read: one lock per batch
			samples = samples[:0]
		}
		op, payload, err := c.readFrame(buf)
		if err != nil {
			c.open.Store(false)
			if c.closeCode.Load() == 0 {
				c.closeCode.Store(1006)
			}
			return
		}
		if cap(payload) > cap(buf) {
			buf = payload[:0]
		}
		switch op {
		case 0x1:
			if c.centri && hasCentrifugoPing(payload) {
				c.write(clientFrame(0x1, centrifugoPing))
			}
			// One publication per frame from instrumented_server and the baseline; Centrifugo
			// batches the pushes due to a connection into one frame, one per line: count each.
			var now float64
			if c.latency {
				now = float64(time.Now().UnixNano()) / 1e9
			}
			var n int64
			for rest := payload; ; {
				at := bytes.Index(rest, tsMarker)
				if at < 0 {
					break
				}
				n++
				rest = rest[at+len(tsMarker):]
				if c.latency {
					end := bytes.IndexByte(rest, ',')
					if end > 0 {
						if sent, err := strconv.ParseFloat(string(rest[:end]), 64); err == nil {
							samples = append(samples, math.Max(0, now-sent))
						}
					}
				}
			}
			if n > 0 {
				w.count(n)
			}
		case 0x9:
			c.write(clientFrame(0xA, payload))
		case 0x8:
			code := int32(1005)
			if len(payload) >= 2 {
				code = int32(binary.BigEndian.Uint16(payload[:2]))
			}
			c.closeCode.Store(code)
			c.open.Store(false)
			if !c.closeSent.Swap(true) {
				c.write(clientFrame(0x8, payload[:min(len(payload), 2)]))
			}
			if len(samples) > 0 {
				w.hist.Load().addAll(samples)
			}
			return
		}
	}
}

func (w *worker) open(req *openRequest) map[string]any {
	concurrency := req.Concurrency
	if concurrency <= 0 {
		concurrency = 64
	}
	gate := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := map[string]int{}
	opened := 0
	for i := 0; i < req.Count; i++ {
		channel := ""
		if len(req.Channels) > 0 {
			channel = req.Channels[i%len(req.Channels)]
		}
		latency := req.LatencyEvery > 0 && i%req.LatencyEvery == 0
		wg.Add(1)
		gate <- struct{}{}
		go func() {
			defer wg.Done()
			c, err := w.dial(req, channel, latency)
			<-gate
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				reason := err.Error()
				var netErr net.Error
				if errors.As(err, &netErr) {
					reason = "OSError: " + reason
				}
				if len(reason) > 120 {
					reason = reason[:120]
				}
				failed[reason]++
				return
			}
			opened++
			w.mu.Lock()
			w.conns = append(w.conns, c)
			w.mu.Unlock()
			go w.read(c)
		}()
	}
	wg.Wait()
	return map[string]any{"opened": opened, "failed": failed, "open": w.openCount()}
}

func (w *worker) openCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, c := range w.conns {
		if c.open.Load() {
			n++
		}
	}
	return n
}

func (w *worker) stats() map[string]any {
	h := w.hist.Load()
	h.mu.Lock()
	latency := make(map[string]int64, len(h.counts))
	for bucket, n := range h.counts {
		latency[strconv.Itoa(bucket)] = n
	}
	maximum := h.max
	h.mu.Unlock()
	closes := map[string]int{}
	w.mu.Lock()
	for _, c := range w.conns {
		if !c.open.Load() {
			code := c.closeCode.Load()
			if code == 0 {
				code = 1006
			}
			closes[strconv.Itoa(int(code))]++
		}
	}
	w.mu.Unlock()
	var usage syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	cpu := float64(usage.Utime.Sec+usage.Stime.Sec) + float64(usage.Utime.Usec+usage.Stime.Usec)/1e6
	return map[string]any{"delivered": w.delivered.Load(), "latency": latency, "max": maximum,
		"open": w.openCount(), "closes": closes, "cpu": cpu}
}

func (w *worker) closeAll() map[string]any {
	w.mu.Lock()
	conns := w.conns
	w.conns = nil
	w.mu.Unlock()
	for _, c := range conns {
		if c.open.Load() && !c.closeSent.Swap(true) {
			c.write(clientFrame(0x8, []byte{0x03, 0xe8})) // 1000
		}
	}
	deadline := time.After(3 * time.Second)
	for _, c := range conns {
		select {
		case <-c.done:
		case <-deadline:
			c.nc.Close()
		}
	}
	for _, c := range conns {
		c.nc.Close()
	}
	return map[string]any{"closed": true}
}

func raiseFileLimit() {
	var limit syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit) == nil && limit.Cur < limit.Max {
		limit.Cur = limit.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &limit)
	}
}

func main() {
	slot := flag.Int("worker", 0, "this worker's slot in the counters file")
	counters := flag.String("counters", "", "shared file of 8-byte delivery counters, one per worker")
	flag.Parse()
	raiseFileLimit()
	w := &worker{}
	w.hist.Store(newHistogram())
	if *counters != "" {
		file, err := os.OpenFile(*counters, os.O_RDWR, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "goclient:", err)
			os.Exit(2)
		}
		info, _ := file.Stat()
		data, err := syscall.Mmap(int(file.Fd()), 0, int(info.Size()), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
		if err != nil || len(data) < 8*(*slot+1) {
			fmt.Fprintln(os.Stderr, "goclient: cannot map the counters file:", err)
			os.Exit(2)
		}
		w.counter = (*int64)(unsafe.Pointer(&data[8**slot]))
	}
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<26)
	out := bufio.NewWriter(os.Stdout)
	for scanner.Scan() {
		var request map[string]json.RawMessage
		if err := json.Unmarshal(scanner.Bytes(), &request); err != nil {
			fmt.Fprintln(os.Stderr, "goclient: bad command:", err)
			os.Exit(2)
		}
		var cmd string
		json.Unmarshal(request["cmd"], &cmd)
		var reply any
		switch cmd {
		case "open":
			var req openRequest
			json.Unmarshal(scanner.Bytes(), &req)
			reply = w.open(&req)
		case "stats":
			reply = w.stats()
		case "reset":
			w.hist.Store(newHistogram())
			reply = map[string]any{"reset": true}
		case "close":
			reply = w.closeAll()
		case "quit":
			return
		default:
			reply = map[string]any{"error": "unknown command " + cmd}
		}
		encoded, _ := json.Marshal(reply)
		out.Write(encoded)
		out.WriteByte('\n')
		out.Flush()
	}
}
