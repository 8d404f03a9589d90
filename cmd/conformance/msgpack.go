package main

// A minimal msgpack encoder and strict decoder, written from the format's
// specification and PROTOCOL.md rather than borrowed from package ipc: the
// conformance kit is a second, independent implementation of the wire
// format, so a mistake shared by the dispatcher and the Go sdk cannot hide
// from it.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
)

// enc appends msgpack values to b.
type enc struct{ b []byte }

func (e *enc) arrayLen(n int) {
	switch {
	case n < 16:
		e.b = append(e.b, 0x90|byte(n))
	case n <= math.MaxUint16:
		e.b = append(e.b, 0xdc)
		e.b = binary.BigEndian.AppendUint16(e.b, uint16(n))
	default:
		e.b = append(e.b, 0xdd)
		e.b = binary.BigEndian.AppendUint32(e.b, uint32(n))
	}
}

func (e *enc) mapLen(n int) {
	switch {
	case n < 16:
		e.b = append(e.b, 0x80|byte(n))
	case n <= math.MaxUint16:
		e.b = append(e.b, 0xde)
		e.b = binary.BigEndian.AppendUint16(e.b, uint16(n))
	default:
		e.b = append(e.b, 0xdf)
		e.b = binary.BigEndian.AppendUint32(e.b, uint32(n))
	}
}

func (e *enc) uint(v uint64) {
	switch {
	case v < 128:
		e.b = append(e.b, byte(v))
	case v <= math.MaxUint8:
		e.b = append(e.b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		e.b = append(e.b, 0xcd)
		e.b = binary.BigEndian.AppendUint16(e.b, uint16(v))
	case v <= math.MaxUint32:
		e.b = append(e.b, 0xce)
		e.b = binary.BigEndian.AppendUint32(e.b, uint32(v))
	default:
		e.b = append(e.b, 0xcf)
		e.b = binary.BigEndian.AppendUint64(e.b, v)
	}
}

func (e *enc) int(v int64) {
	switch {
	case v >= 0:
		e.uint(uint64(v))
	case v >= -32:
		e.b = append(e.b, byte(v))
	case v >= math.MinInt8:
		e.b = append(e.b, 0xd0, byte(v))
	case v >= math.MinInt16:
		e.b = append(e.b, 0xd1)
		e.b = binary.BigEndian.AppendUint16(e.b, uint16(v))
	case v >= math.MinInt32:
		e.b = append(e.b, 0xd2)
		e.b = binary.BigEndian.AppendUint32(e.b, uint32(v))
	default:
		e.b = append(e.b, 0xd3)
		e.b = binary.BigEndian.AppendUint64(e.b, uint64(v))
	}
}

func (e *enc) str(s string) {
	n := len(s)
	switch {
	case n < 32:
		e.b = append(e.b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		e.b = append(e.b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		e.b = append(e.b, 0xda)
		e.b = binary.BigEndian.AppendUint16(e.b, uint16(n))
	default:
		e.b = append(e.b, 0xdb)
		e.b = binary.BigEndian.AppendUint32(e.b, uint32(n))
	}
	e.b = append(e.b, s...)
}

func (e *enc) bin(p []byte) {
	n := len(p)
	switch {
	case n <= math.MaxUint8:
		e.b = append(e.b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		e.b = append(e.b, 0xc5)
		e.b = binary.BigEndian.AppendUint16(e.b, uint16(n))
	default:
		e.b = append(e.b, 0xc6)
		e.b = binary.BigEndian.AppendUint32(e.b, uint32(n))
	}
	e.b = append(e.b, p...)
}

func (e *enc) bool(v bool) {
	if v {
		e.b = append(e.b, 0xc3)
	} else {
		e.b = append(e.b, 0xc2)
	}
}

func (e *enc) nil() { e.b = append(e.b, 0xc0) }

func (e *enc) float64(v float64) {
	e.b = append(e.b, 0xcb)
	e.b = binary.BigEndian.AppendUint64(e.b, math.Float64bits(v))
}

// header encodes a header map, keys in order. A nil map is nil; asBin sends
// every string as bin, which receivers must accept.
func (e *enc) header(h map[string][]string, asBin bool) {
	if h == nil {
		e.nil()
		return
	}
	s := e.str
	if asBin {
		s = func(v string) { e.bin([]byte(v)) }
	}
	e.mapLen(len(h))
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range h {
			if !yield(k) {
				return
			}
		}
	}) {
		s(k)
		vs := h[k]
		if vs == nil {
			e.nil()
			continue
		}
		e.arrayLen(len(vs))
		for _, v := range vs {
			s(v)
		}
	}
}

// dec reads msgpack values from one payload, checking every declared length
// against the bytes that remain.
type dec struct {
	b   []byte
	off int
}

var errShort = errors.New("payload ends inside a value")

func (d *dec) left() int { return len(d.b) - d.off }

func (d *dec) byte() (byte, error) {
	if d.left() < 1 {
		return 0, errShort
	}
	c := d.b[d.off]
	d.off++
	return c, nil
}

func (d *dec) take(n int) ([]byte, error) {
	if n < 0 || n > d.left() {
		return nil, fmt.Errorf("declared length %d exceeds the %d bytes left", n, d.left())
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p, nil
}

func (d *dec) be(n int) (uint64, error) {
	p, err := d.take(n)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// arrayLen reads an array header.
func (d *dec) arrayLen() (int, error) {
	c, err := d.byte()
	if err != nil {
		return 0, err
	}
	var n uint64
	switch {
	case c&0xf0 == 0x90:
		n = uint64(c & 0x0f)
	case c == 0xdc:
		n, err = d.be(2)
	case c == 0xdd:
		n, err = d.be(4)
	default:
		return 0, fmt.Errorf("want an array, got %s", describe(c))
	}
	if err != nil {
		return 0, err
	}
	if n > uint64(d.left()) {
		return 0, fmt.Errorf("array of %d elements in %d bytes", n, d.left())
	}
	return int(n), nil
}

// int reads any msgpack integer that fits in an int64.
func (d *dec) int() (int64, error) {
	c, err := d.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c <= 0x7f:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	}
	var v uint64
	switch c {
	case 0xcc, 0xd0:
		v, err = d.be(1)
	case 0xcd, 0xd1:
		v, err = d.be(2)
	case 0xce, 0xd2:
		v, err = d.be(4)
	case 0xcf, 0xd3:
		v, err = d.be(8)
	default:
		return 0, fmt.Errorf("want an integer, got %s", describe(c))
	}
	if err != nil {
		return 0, err
	}
	switch c {
	case 0xd0:
		return int64(int8(v)), nil
	case 0xd1:
		return int64(int16(v)), nil
	case 0xd2:
		return int64(int32(v)), nil
	case 0xd3:
		return int64(v), nil
	case 0xcf:
		if v > math.MaxInt64 {
			return 0, fmt.Errorf("integer %d out of range", v)
		}
	}
	return int64(v), nil
}

// uint reads a non-negative integer.
func (d *dec) uint() (uint64, error) {
	v, err := d.int()
	if err == nil && v < 0 {
		err = fmt.Errorf("want a non-negative integer, got %d", v)
	}
	return uint64(v), err
}

// bytes reads str, bin or nil (nil gives nil).
func (d *dec) bytes() ([]byte, error) {
	c, err := d.byte()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case c == 0xc0:
		return nil, nil
	case c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case c == 0xd9 || c == 0xc4:
		n, err = d.be(1)
	case c == 0xda || c == 0xc5:
		n, err = d.be(2)
	case c == 0xdb || c == 0xc6:
		n, err = d.be(4)
	default:
		return nil, fmt.Errorf("want str or bin, got %s", describe(c))
	}
	if err != nil {
		return nil, err
	}
	return d.take(int(n))
}

func (d *dec) bool() (bool, error) {
	c, err := d.byte()
	switch {
	case err != nil:
		return false, err
	case c == 0xc2:
		return false, nil
	case c == 0xc3:
		return true, nil
	}
	return false, fmt.Errorf("want a bool, got %s", describe(c))
}

// header reads nil or a map from str to an array of str (or nil).
func (d *dec) header() (map[string][]string, error) {
	c, err := d.byte()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case c == 0xc0:
		return nil, nil
	case c&0xf0 == 0x80:
		n = uint64(c & 0x0f)
	case c == 0xde:
		n, err = d.be(2)
	case c == 0xdf:
		n, err = d.be(4)
	default:
		return nil, fmt.Errorf("want a header map, got %s", describe(c))
	}
	if err != nil {
		return nil, err
	}
	if n > uint64(d.left()/2) {
		return nil, fmt.Errorf("map of %d entries in %d bytes", n, d.left())
	}
	h := make(map[string][]string, n)
	for range n {
		k, err := d.bytes()
		if err != nil {
			return nil, fmt.Errorf("header name: %w", err)
		}
		if d.left() > 0 && d.b[d.off] == 0xc0 {
			d.off++
			h[string(k)] = nil
			continue
		}
		m, err := d.arrayLen()
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", k, err)
		}
		vs := make([]string, m)
		for i := range vs {
			v, err := d.bytes()
			if err != nil {
				return nil, fmt.Errorf("header %q: %w", k, err)
			}
			vs[i] = string(v)
		}
		h[string(k)] = vs
	}
	return h, nil
}

// skip reads and discards n values of any type (the fields a newer peer
// appended), without recursion: n counts the values still to skip.
func (d *dec) skip(n int) error {
	for n > 0 {
		n--
		c, err := d.byte()
		if err != nil {
			return err
		}
		var size, elems uint64
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c&0xe0 == 0xa0:
			size = uint64(c & 0x1f)
		case c&0xf0 == 0x90:
			elems = uint64(c & 0x0f)
		case c&0xf0 == 0x80:
			elems = 2 * uint64(c&0x0f)
		case c == 0xcc || c == 0xd0:
			size = 1
		case c == 0xcd || c == 0xd1:
			size = 2
		case c == 0xce || c == 0xd2 || c == 0xca:
			size = 4
		case c == 0xcf || c == 0xd3 || c == 0xcb:
			size = 8
		case c == 0xd9 || c == 0xc4:
			size, err = d.be(1)
		case c == 0xda || c == 0xc5:
			size, err = d.be(2)
		case c == 0xdb || c == 0xc6:
			size, err = d.be(4)
		case c == 0xdc:
			elems, err = d.be(2)
		case c == 0xdd:
			elems, err = d.be(4)
		case c == 0xde:
			elems, err = d.be(2)
			elems *= 2
		case c == 0xdf:
			elems, err = d.be(4)
			elems *= 2
		case c >= 0xd4 && c <= 0xd8: // fixext 1, 2, 4, 8, 16: a type byte and the data
			size = 1 + 1<<(c-0xd4)
		case c >= 0xc7 && c <= 0xc9: // ext 8, 16, 32: length, type byte, data
			size, err = d.be(1 << (c - 0xc7))
			size++
		default:
			return fmt.Errorf("%s is not a msgpack value", describe(c))
		}
		if err != nil {
			return err
		}
		if _, err := d.take(int(min(size, uint64(math.MaxInt32)))); err != nil {
			return err
		}
		// Every value takes at least a byte.
		if elems > uint64(d.left()) || uint64(n)+elems > uint64(d.left()) {
			return fmt.Errorf("%d values in %d bytes", uint64(n)+elems, d.left())
		}
		n += int(elems)
	}
	return nil
}

// end checks that the payload holds nothing after its array.
func (d *dec) end() error {
	if d.left() != 0 {
		return fmt.Errorf("%d bytes after the payload array", d.left())
	}
	return nil
}

// describe names the type of a msgpack lead byte, for error messages.
func describe(c byte) string {
	switch {
	case c <= 0x7f || c >= 0xe0:
		return "a fixint"
	case c&0xf0 == 0x80:
		return "a map"
	case c&0xf0 == 0x90:
		return "an array"
	case c&0xe0 == 0xa0:
		return "a str"
	case c == 0xc0:
		return "nil"
	case c == 0xc2 || c == 0xc3:
		return "a bool"
	case c == 0xc4 || c == 0xc5 || c == 0xc6:
		return "a bin"
	case c == 0xca || c == 0xcb:
		return "a float"
	case c >= 0xcc && c <= 0xd3:
		return "an integer"
	case c >= 0xd9 && c <= 0xdb:
		return "a str"
	case c == 0xdc || c == 0xdd:
		return "an array"
	case c == 0xde || c == 0xdf:
		return "a map"
	}
	return fmt.Sprintf("byte 0x%02x", c)
}
