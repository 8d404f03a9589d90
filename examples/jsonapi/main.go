// Command jsonapi is a small JSON API built with the chi router and its
// middleware, unchanged: any http.Handler runs in a worker.
//
//	GET  /products        the catalog
//	GET  /products/{id}   one product, or a JSON 404
//	POST /quotes          {"items":[{"id":"p1","qty":2}]} -> the priced lines and total
//
// Errors are JSON too: {"error":"..."} with 400, 404, 413, 415 or 422.
// Responses are gzipped for clients that accept it (chi's Compress).
//
// The catalog is compiled in and read-only. Each worker is its own process,
// so anything one worker keeps in memory is invisible to the others and lost
// when it is replaced: keep shared state in a database or on disk.
//
//	go build -o bin/ ./cmd/dispatcher ./examples/jsonapi
//	bin/dispatcher --workers bin/jsonapi --listen 127.0.0.1:8080
//	curl -s 127.0.0.1:8080/quotes -H 'Content-Type: application/json' -d '{"items":[{"id":"p2","qty":3}]}'
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/childproc/dispatcher/sdk"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// Product is an entry of the catalog.
type Product struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	PriceCents int    `json:"price_cents"`
}

var catalog = []Product{
	{ID: "p1", Name: "notebook", PriceCents: 450},
	{ID: "p2", Name: "pencil", PriceCents: 120},
	{ID: "p3", Name: "eraser", PriceCents: 80},
}

func find(id string) (Product, bool) {
	for _, p := range catalog {
		if p.ID == id {
			return p, true
		}
	}
	return Product{}, false
}

// QuoteRequest is the body of POST /quotes.
type QuoteRequest struct {
	Items []struct {
		ID  string `json:"id"`
		Qty int    `json:"qty"`
	} `json:"items"`
}

// Quote is the answer to POST /quotes.
type Quote struct {
	Lines []QuoteLine `json:"lines"`
	Total int         `json:"total_cents"`
}

// QuoteLine is one priced item of a Quote.
type QuoteLine struct {
	Product
	Qty      int `json:"qty"`
	Subtotal int `json:"subtotal_cents"`
}

// maxBody bounds the request bodies the API reads.
const maxBody = 64 << 10

func main() {
	sdk.Serve(routes())
}

func routes() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.Compress(5, "application/json"))
	r.Use(middleware.StripSlashes)
	r.Get("/products", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, catalog)
	})
	r.Get("/products/{id}", func(w http.ResponseWriter, r *http.Request) {
		p, ok := find(chi.URLParam(r, "id"))
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no product %q", chi.URLParam(r, "id")))
			return
		}
		writeJSON(w, http.StatusOK, p)
	})
	r.With(middleware.AllowContentType("application/json")).Post("/quotes", quote)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such route")
	})
	return r
}

func quote(w http.ResponseWriter, r *http.Request) {
	var req QuoteRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxBody))
			return
		}
		writeError(w, http.StatusBadRequest, "invalid JSON: "+err.Error())
		return
	}
	if len(req.Items) == 0 {
		writeError(w, http.StatusUnprocessableEntity, "no items")
		return
	}
	var q Quote
	for _, it := range req.Items {
		p, ok := find(it.ID)
		switch {
		case !ok:
			writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("no product %q", it.ID))
			return
		case it.Qty < 1 || it.Qty > 1000:
			writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("qty %d of %q outside 1-1000", it.Qty, it.ID))
			return
		}
		line := QuoteLine{Product: p, Qty: it.Qty, Subtotal: p.PriceCents * it.Qty}
		q.Lines = append(q.Lines, line)
		q.Total += line.Subtotal
	}
	writeJSON(w, http.StatusOK, q)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
