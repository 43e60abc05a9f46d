module example.com/hello-go-http

go 1.22
