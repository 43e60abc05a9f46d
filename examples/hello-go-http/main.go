// An HTTP function in Go: any server that listens on $PORT. Petrel forwards /fn/NAME/<path> to
// it as /<path>, with the method, headers and body as sent.
package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
)

func main() {
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		name := r.URL.Query().Get("name")
		if name == "" && len(body) > 0 {
			var in struct {
				Name string `json:"name"`
			}
			if json.Unmarshal(body, &in) == nil {
				name = in.Name
			}
		}
		if name == "" {
			name = "world"
		}
		log.Printf("%s %s", r.Method, r.URL)
		w.Header().Set("content-type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"message":   greeting + ", " + name + "!",
			"method":    r.Method,
			"path":      r.URL.Path,
			"bodyBytes": len(body),
		})
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
}
