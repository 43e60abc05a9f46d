// A Petrel function in Go, written with the official github.com/aws/aws-lambda-go: built into
// an executable named bootstrap (see petrel.toml), it runs as runtime "provided" through the
// AWS Lambda Runtime API, unchanged from how it runs on Lambda.
package main

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// Event is what `petrel invoke NAME --data '{"name": "you"}'` sends; a request to /fn/NAME/...
// sends an API-Gateway-v2-style event, whose query string is in queryStringParameters.
type Event struct {
	Name        string            `json:"name"`
	QueryString map[string]string `json:"queryStringParameters"`
}

type Answer struct {
	Message  string `json:"message"`
	Function string `json:"function"`
}

func handle(ctx context.Context, e Event) (Answer, error) {
	name := e.Name
	if name == "" {
		name = e.QueryString["name"]
	}
	if name == "" {
		name = "world"
	}
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello"
	}
	requestID := ""
	if lc, ok := lambdacontext.FromContext(ctx); ok {
		requestID = lc.AwsRequestID
	}
	log.Printf("greeting %s (request %s)", name, requestID)
	return Answer{Message: fmt.Sprintf("%s, %s!", greeting, name), Function: lambdacontext.FunctionName}, nil
}

func main() {
	lambda.Start(handle)
}
