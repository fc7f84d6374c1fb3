// An independent oracle for client certificates: Go's crypto/x509, the code kube-apiserver's x509
// authenticator runs. k8s.io/apiserver/pkg/authentication/request/x509 verifies the first peer
// certificate with Roots = the --client-ca-file pool, Intermediates = the other certificates the
// client presented, KeyUsages = [ExtKeyUsageClientAuth]; a chain whose leaf has an empty CN is
// "not recognised" (no user, no error). Standard library only.
//
// usage: go run x509verify.go CA_PEM CERT_PEM [client|server] [RFC3339_TIME]
// CERT_PEM holds the leaf first, then any intermediates the client would present. Without a time
// the current time is used. Prints one line and exits 0:
//
//	ok username=<CN> groups=<O,...>
//	rejected <Go's error>
//	unrecognised empty common name
//	unparseable <Go's parse error>     (the TLS handshake would already fail)
//
// Exit 2 on bad input (a file missing, no CA certificate).
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"time"
)

func fail(args ...any) {
	fmt.Println(append([]any{"input:"}, args...)...)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: x509verify CA_PEM CERT_PEM [client|server] [RFC3339_TIME]")
	}
	caPEM, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fail("no CA certificate")
	}
	chainPEM, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	var certs []*x509.Certificate
	for rest := chainPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fmt.Println("unparseable", err)
			return
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		fail("no certificate")
	}
	opts := x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if len(os.Args) > 3 && os.Args[3] == "server" {
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	if len(os.Args) > 4 {
		if opts.CurrentTime, err = time.Parse(time.RFC3339, os.Args[4]); err != nil {
			fail(err)
		}
	}
	if len(certs) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	leaf := certs[0]
	if _, err := leaf.Verify(opts); err != nil {
		fmt.Println("rejected", err)
		return
	}
	if leaf.Subject.CommonName == "" {
		fmt.Println("unrecognised empty common name")
		return
	}
	fmt.Printf("ok username=%s groups=%s\n", leaf.Subject.CommonName, strings.Join(leaf.Subject.Organization, ","))
}
