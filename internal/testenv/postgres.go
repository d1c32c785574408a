package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// PostgresServer is a throwaway PostgreSQL cluster: initdb in a temporary
// directory, listening on a free loopback port (and a unix socket in that
// directory), trusting local connections as the superuser "postgres".
// When the tests run as root it runs as the unprivileged user "nobody"
// (PostgreSQL refuses root), the directory given to that user.
type PostgresServer struct {
	// Port is its TCP port on 127.0.0.1.
	Port   int
	dir    string
	cmd    *exec.Cmd
	exited <-chan struct{}
}

var (
	pgOnce sync.Once
	pgSrv  *PostgresServer
	pgErr  error
	pgSkip string
	dbSeq  atomic.Int64
)

// Postgres returns the test binary's PostgreSQL cluster, starting it on
// first use; Main stops it. When it cannot start the test fails, except
// on a developer's machine without PostgreSQL (no PROVGATE_POSTGRES_BIN,
// not CI=true, no binaries found), where it is skipped with the way to
// get them.
func Postgres(tb testing.TB) *PostgresServer {
	tb.Helper()
	pgOnce.Do(func() { pgSrv, pgSkip, pgErr = startPostgres() })
	if pgSkip != "" {
		tb.Skip(pgSkip)
	}
	if pgErr != nil {
		tb.Fatalf("start PostgreSQL: %v", pgErr)
	}
	return pgSrv
}

// URL is the URL of one database of the cluster.
func (s *PostgresServer) URL(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, database)
}

// NewDatabase creates a fresh, empty database for one test and returns
// its URL. It is dropped with the cluster.
func (s *PostgresServer) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("t%d", dbSeq.Add(1))
	db, err := sql.Open("pgx", s.URL("postgres"))
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("create database %s: %v", name, err)
	}
	return s.URL(name)
}

// PostgresBinDir finds the directory of PostgreSQL's server binaries
// (initdb, postgres): $PROVGATE_POSTGRES_BIN, else Debian's newest
// /usr/lib/postgresql/*/bin (scripts/install-postgres.sh installs it).
func PostgresBinDir() (string, error) {
	if d := os.Getenv("PROVGATE_POSTGRES_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			return "", fmt.Errorf("PROVGATE_POSTGRES_BIN=%s: %w", d, err)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries: run scripts/install-postgres.sh or set PROVGATE_POSTGRES_BIN to the directory of initdb and postgres")
}

func pgVersion(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// startPostgres starts the cluster; skip is set (and err nil) only when
// the binaries are missing on a machine that may go without.
func startPostgres() (srv *PostgresServer, skip string, err error) {
	bin, err := PostgresBinDir()
	if err != nil {
		if os.Getenv("PROVGATE_POSTGRES_BIN") == "" && os.Getenv("CI") != "true" {
			return nil, "PostgreSQL tests skipped: " + err.Error(), nil
		}
		return nil, "", err
	}
	dir, err := os.MkdirTemp("", "provgate-pg-*")
	if err != nil {
		return nil, "", err
	}
	cred, err := pgCredential(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, "", fmt.Errorf("initdb: %w\n%s", err, out)
	}
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, "", err
		}
		// A throwaway cluster: durability is not what the tests check
		// (the registry's transactions and locks are).
		cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir, "-h", "127.0.0.1", "-p", strconv.Itoa(port),
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
			"-c", "max_connections=400", "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning")
		logf, err := os.Create(filepath.Join(dir, "postgres.log"))
		if err != nil {
			return nil, "", err
		}
		os.Chown(logf.Name(), int(cred.Uid), int(cred.Gid))
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			return nil, "", fmt.Errorf("start postgres: %w", err)
		}
		logf.Close()
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		s := &PostgresServer{Port: port, dir: dir, cmd: cmd, exited: exited}
		if s.waitReady(60 * time.Second) {
			return s, "", nil
		}
		cmd.Process.Kill()
		<-exited
	}
	log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
	os.RemoveAll(dir)
	return nil, "", fmt.Errorf("PostgreSQL did not become ready; log:\n%s", log)
}

// pgCredential is the user the cluster runs as: the current one, or
// "nobody" when that is root, to whom dir is given.
func pgCredential(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return &syscall.Credential{Uid: uint32(os.Geteuid()), Gid: uint32(os.Getegid())}, nil
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL needs an unprivileged user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (s *PostgresServer) waitReady(timeout time.Duration) bool {
	db, err := sql.Open("pgx", s.URL("postgres"))
	if err != nil {
		return false
	}
	defer db.Close()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return false
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := db.PingContext(ctx)
		cancel()
		if err == nil {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// StopPostgres stops the cluster if it was started (a fast shutdown:
// open connections are ended) and removes its directory.
func StopPostgres() {
	if pgSrv == nil {
		return
	}
	pgSrv.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-pgSrv.exited:
	case <-time.After(10 * time.Second):
		pgSrv.cmd.Process.Kill()
		<-pgSrv.exited
	}
	os.RemoveAll(pgSrv.dir)
}
