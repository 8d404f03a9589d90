// Command logging logs through sdk.Logger, whose lines reach the
// dispatcher's log at their own level, with the request ID, and with their
// fields (prefixed "child."), instead of arriving as plain text:
//
//	POST /orders  {"item":"book","qty":2}
//
// logs "order received" at info level with the item and quantity, a warning
// for a quantity over 100, the decoded order at debug level (shown with the
// dispatcher's --log-level debug), and an error for a body that is not a
// valid order, which is answered with 400. Try it with:
//
//	bin/dispatcher --workers bin/logging --log-format json
//	curl 127.0.0.1:8080/orders -d '{"item":"book","qty":200}'
//
// Lines printed otherwise (fmt.Fprintln(os.Stderr, ...), the log package)
// also reach the dispatcher's log, at info level and without request ID.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/childproc/dispatcher/sdk"
	"github.com/sirupsen/logrus"
)

// Order is the body of POST /orders.
type Order struct {
	Item string `json:"item"`
	Qty  int    `json:"qty"`
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", order)
	sdk.Serve(mux)
}

func order(w http.ResponseWriter, r *http.Request) {
	log := sdk.Logger(r.Context()) // carries the request ID
	var o Order
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&o); err != nil || o.Item == "" || o.Qty < 1 {
		log.WithError(err).Error("invalid order")
		http.Error(w, "want {\"item\": non-empty, \"qty\": positive}", http.StatusBadRequest)
		return
	}
	log.WithField("order", fmt.Sprintf("%+v", o)).Debug("decoded")
	log = log.WithFields(logrus.Fields{"item": o.Item, "qty": o.Qty})
	log.Info("order received")
	if o.Qty > 100 {
		log.Warn("unusually large order")
	}
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, "order for %d %s accepted\n", o.Qty, o.Item)
}
