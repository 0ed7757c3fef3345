package cli

import (
	"log/slog"
	"os"
	"os/signal"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/logging"
)

// accessLog wires [logging] access_log_file and access_log_interval into
// the engine's proxy server: the records go to the file (through an Async
// handler, so the event loops never wait on it) and SIGUSR1 reopens it,
// for logrotate, as nginx does. Without a file they stay on stderr with
// the rest, and SIGUSR1 only says so.
type accessLog struct {
	eng   *engine.Engine
	file  *logging.File
	async *logging.Async
	sigs  chan os.Signal
	done  chan struct{}
}

// startAccessLog applies cfg's access log settings; format is the log
// format in effect and lv the log level.
func startAccessLog(cfg *config.Config, eng *engine.Engine, format string, lv slog.Leveler, log *slog.Logger) (*accessLog, error) {
	a := &accessLog{eng: eng, done: make(chan struct{})}
	if path := cfg.Logging.AccessLogFile; path != "" {
		f, err := logging.OpenFile(path)
		if err != nil {
			return nil, err
		}
		a.file = f
		a.async = logging.NewAsync(logging.NewHandler(f, lv, format), 0)
		eng.Server().SetAccessLog(slog.New(a.async))
		log.Info("access log", "file", path)
	}
	a.apply(cfg)
	a.sigs = make(chan os.Signal, 1)
	if reopenSignal != nil {
		signal.Notify(a.sigs, reopenSignal)
	}
	go a.watch(log)
	return a, nil
}

// apply takes a (re)loaded config's interval and explain_sample; the
// file needs a restart.
func (a *accessLog) apply(cfg *config.Config) {
	a.eng.Server().SetAccessLogInterval(cfg.Logging.AccessLogInterval.D())
	a.eng.Server().SetExplainSample(cfg.Logging.ExplainSample)
}

// watch reopens the file on each SIGUSR1 until close.
func (a *accessLog) watch(log *slog.Logger) {
	for {
		select {
		case <-a.done:
			return
		case <-a.sigs:
		}
		if a.file == nil {
			log.Info("SIGUSR1: no logging.access_log_file to reopen")
			continue
		}
		a.async.Flush(time.Second) // the records so far end the old file
		if err := a.file.Reopen(); err != nil {
			log.Warn("SIGUSR1: cannot reopen the access log; writing on to the old file", "err", err.Error())
			continue
		}
		log.Info("SIGUSR1: access log reopened", "file", a.file.Path())
	}
}

// close stops the progress records and the signal watch, writes what is
// queued and closes the file.
func (a *accessLog) close() {
	a.eng.Server().SetAccessLogInterval(0)
	signal.Stop(a.sigs)
	close(a.done)
	if a.file != nil {
		a.async.Flush(2 * time.Second)
		a.file.Close()
	}
}
