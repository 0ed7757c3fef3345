// Command echo is a tiny TCP and UDP echo server for trying dynamic-proxy:
//
//	go run ./tools/echo -listen 127.0.0.1:9001 -name web1
//
// Each TCP connection first receives "hello from NAME\n", then its own bytes
// back; each UDP datagram is answered with "NAME: " and the datagram.
//
// With -dial it is instead a client that sends one message and prints the
// reply, for seeing traffic flow through the proxy:
//
//	go run ./tools/echo -dial 127.0.0.1:8000 -msg hi
//	go run ./tools/echo -dial 127.0.0.1:8001 -udp-dial -msg hi
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "TCP and UDP address to echo on")
	name := flag.String("name", "", "name to greet with (default: the listen address)")
	udp := flag.Bool("udp", true, "also echo UDP datagrams on the same address")
	dial := flag.String("dial", "", "be a client: connect to this address, send -msg, print the reply")
	udpDial := flag.Bool("udp-dial", false, "with -dial: use UDP")
	msg := flag.String("msg", "hello", "with -dial: the message to send")
	flag.Parse()
	if *dial != "" {
		if err := client(*dial, *udpDial, *msg); err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		return
	}
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

func client(addr string, udp bool, msg string) error {
	network := "tcp"
	if udp {
		network = "udp"
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return err
	}
	if udp {
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		os.Stdout.Write(buf[:n])
		return nil
	}
	c.(*net.TCPConn).CloseWrite()
	_, err = io.Copy(os.Stdout, c)
	return err
}
