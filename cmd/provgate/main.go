// Command provgate is the provgate sidecar, its reference registry and the
// tools around them, as one binary with subcommands.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand. run gets the arguments after the command name.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands is the table of subcommands; each lives in its own file.
var commands = map[string]command{}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				return exitCode(c.run(ctx, []string{"-h"}, stdout, stderr), stderr)
			}
		}
		usage(stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "provgate: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return exitCode(c.run(ctx, args[1:], stdout, stderr), stderr)
}

// usageError is a bad invocation: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func exitCode(err error, stderr io.Writer) int {
	switch e := err.(type) {
	case nil:
		return 0
	case *usageError:
		if e.msg != "" {
			fmt.Fprintln(stderr, "provgate:", e.msg)
		}
		return 2
	default:
		if err == errHelp {
			return 0
		}
		fmt.Fprintln(stderr, "provgate:", err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "provgate — a verifying, metering data sidecar for licensed training data")
	fmt.Fprintln(w, "\nUsage: provgate COMMAND [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'provgate COMMAND -h' for a command's flags. Every flag also reads PROVGATE_<FLAG>.")
}
