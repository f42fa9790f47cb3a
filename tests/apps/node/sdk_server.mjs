// An app written with the official Dapr JS SDK (@dapr/dapr), unchanged: a DaprServer whose
// invoker listens on POST /hello and answers with what it received.
import { DaprServer, HttpMethod } from "@dapr/dapr";

const server = new DaprServer({
  serverHost: "127.0.0.1",
  serverPort: process.env.APP_PORT,
  clientOptions: { daprHost: "127.0.0.1", daprPort: process.env.DAPR_HTTP_PORT },
});

await server.invoker.listen(
  "hello",
  async (data) => ({
    received: JSON.parse(data.body),
    query: data.query,
    caller: data.headers["dapr-caller-app-id"],
  }),
  { method: HttpMethod.POST },
);
await server.start();
console.log("sdk server started");
