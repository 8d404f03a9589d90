// Command nocompile does not compile: the tests of Build check that the
// compiler's message reaches the test.
package main

func main() {
	var n int = "not a number"
	_ = n
}
