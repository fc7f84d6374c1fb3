// An independent oracle for client certificates: Go's crypto/x509, the code kube-apiserver's x509
// authenticator runs (k8s.io/apiserver/pkg/authentication/request/x509 calls Verify with
// KeyUsages: ExtKeyUsageClientAuth and the --client-ca-file pool). Standard library only.
//
// usage: go run x509verify.go CA_PEM CERT_PEM
// prints "ok username=<CN> groups=<O,...>" or "rejected <reason>"; exit 0 either way, 2 on bad input.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

func main() {
	caPEM, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Println("input", err)
		os.Exit(2)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fmt.Println("input: no CA certificate")
		os.Exit(2)
	}
	leafPEM, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Println("input", err)
		os.Exit(2)
	}
	block, _ := pem.Decode(leafPEM)
	if block == nil {
		fmt.Println("input: no certificate")
		os.Exit(2)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		fmt.Println("input", err)
		os.Exit(2)
	}
	usage := x509.ExtKeyUsageClientAuth
	if len(os.Args) > 3 && os.Args[3] == "server" {
		usage = x509.ExtKeyUsageServerAuth
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		fmt.Println("rejected", err)
		return
	}
	fmt.Printf("ok username=%s groups=%s\n", leaf.Subject.CommonName, strings.Join(leaf.Subject.Organization, ","))
}
