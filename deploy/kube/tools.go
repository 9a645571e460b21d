//go:build tools

// Package tools names the commands this module builds, so `go mod tidy` keeps their
// dependencies. There is no other Go code in calico-lite.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
