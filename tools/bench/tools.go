//go:build tools

// Package tools keeps the commands scripts/build-bench-tools.sh builds in go.mod and go.sum.
package tools

import (
	_ "github.com/google/go-containerregistry/cmd/crane/cmd"
)
