// An app written with the official Dapr JS SDK (@dapr/dapr), unchanged: a DaprClient invoking
// the method "hello" of the app named on the command line, printing the answer as JSON.
import { DaprClient, HttpMethod } from "@dapr/dapr";

const client = new DaprClient({ daprHost: "127.0.0.1", daprPort: process.env.DAPR_HTTP_PORT });
const result = await client.invoker.invoke(process.argv[2], "hello", HttpMethod.POST, {
  hello: "from the js sdk",
});
console.log("RESULT " + JSON.stringify(result));
