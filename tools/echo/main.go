// Command echo is a tiny TCP and UDP echo server for trying dynamic-proxy:
//
//	go run ./tools/echo -listen 127.0.0.1:9001 -name web1
//
// Each TCP connection first receives "hello from NAME\n", then its own bytes
// back; each UDP datagram is answered with "NAME: " and the datagram.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "TCP and UDP address to echo on")
	name := flag.String("name", "", "name to greet with (default: the listen address)")
	udp := flag.Bool("udp", true, "also echo UDP datagrams on the same address")
	flag.Parse()
	if *name == "" {
		*name = *listen
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	if *udp {
		pc, err := net.ListenPacket("udp", *listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		go func() {
			buf := make([]byte, 65535)
			for {
				n, addr, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(append([]byte(*name+": "), buf[:n]...), addr)
			}
		}()
	}
	log.Printf("echo %s listening on %s", *name, *listen)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "hello from %s\n", *name)
			io.Copy(c, c)
		}()
	}
}
