// ethers v6 through the Sentinel gateway, as a bot would use it: a transfer, a contract call and a
// transfer the signer's policy refuses. Prints one JSON line for the Python test to judge.
import { JsonRpcProvider } from "ethers";

const [url, to, contract, calldata, tooMuch] = process.argv.slice(2);
const provider = new JsonRpcProvider(url, undefined, { staticNetwork: true });
provider.pollingInterval = 100;
const signer = await provider.getSigner();
const out = { address: await signer.getAddress() };
for (const [name, tx] of [["transfer", { to, value: 1000n }], ["call", { to: contract, data: calldata }]]) {
  const sent = await signer.sendTransaction(tx);
  const receipt = await sent.wait(1, 30000);
  out[name] = { hash: sent.hash, status: receipt.status, block: receipt.blockNumber };
}
try {
  await signer.sendTransaction({ to, value: BigInt(tooMuch) });
  out.refusal = null;
} catch (e) {
  out.refusal = { code: e.error?.code ?? null, message: e.error?.message ?? e.message };
}
console.log(JSON.stringify(out));
